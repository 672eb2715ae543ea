/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* org.varlink.service: GetInfo and GetInterfaceDescription over the interfaces the daemon serves. */
#include "cmek-varlink.h"
#include "daemon.h"

static int method_get_info(Manager *m, Call *c, json_object *params) {
        json_object *p = json_object_new_object(), *ifaces = json_object_new_array();
        const Interface *const *list;
        size_t n;

        list = manager_interfaces(&n);
        for (size_t i = 0; i < n; i++)
                json_object_array_add(ifaces, json_object_new_string(list[i]->name));
        json_object_object_add(p, "vendor", json_object_new_string("cmekd project"));
        json_object_object_add(p, "product", json_object_new_string("cmekd"));
        json_object_object_add(p, "version", json_object_new_string(PACKAGE_VERSION));
        json_object_object_add(p, "url", json_object_new_string("https://cmekd.invalid/"));
        json_object_object_add(p, "interfaces", ifaces);
        return call_reply(c, p);
}

static int method_get_interface_description(Manager *m, Call *c, json_object *params) {
        const char *name = cmek_json_get_string(params, "interface");
        const Interface *const *list;
        size_t n;

        if (!name)
                return call_errorf(c, VARLINK_ERROR_INVALID_PARAMETER, "parameter \"interface\" (string) is required");
        list = manager_interfaces(&n);
        for (size_t i = 0; i < n; i++)
                if (streq(list[i]->name, name)) {
                        _cleanup_free_ char *text = manager_interface_description(m, list[i]);
                        json_object *p;
                        if (!text)
                                return -ENOMEM;
                        p = json_object_new_object();
                        json_object_object_add(p, "description", json_object_new_string(text));
                        return call_reply(c, p);
                }
        json_object *p = json_object_new_object();
        json_object_object_add(p, "interface", json_object_new_string(name));
        return call_error(c, VARLINK_ERROR_INTERFACE_NOT_FOUND, p);
}

static const Method varlink_methods[] = {
        { "org.varlink.service.GetInfo", method_get_info },
        { "org.varlink.service.GetInterfaceDescription", method_get_interface_description },
        {}
};

const Interface interface_varlink_service = {
        .name = "org.varlink.service",
        .description =
                "# The Varlink Service Interface is provided by every varlink service. It\n"
                "# describes the service and the interfaces it implements.\n"
                "interface org.varlink.service\n"
                "\n"
                "# Get a list of all the interfaces a service provides and information\n"
                "# about the implementation.\n"
                "method GetInfo() -> (\n"
                "  vendor: string,\n"
                "  product: string,\n"
                "  version: string,\n"
                "  url: string,\n"
                "  interfaces: []string\n"
                ")\n"
                "\n"
                "# Get the description of an interface that is implemented by this service.\n"
                "method GetInterfaceDescription(interface: string) -> (description: string)\n"
                "\n"
                "# The requested interface was not found.\n"
                "error InterfaceNotFound (interface: string)\n"
                "\n"
                "# The requested method was not found\n"
                "error MethodNotFound (method: string)\n"
                "\n"
                "# The interface defines the requested method, but the service does not\n"
                "# implement it.\n"
                "error MethodNotImplemented (method: string)\n"
                "\n"
                "# One of the passed parameters is invalid. cmekd adds a message saying what it must be.\n"
                "error InvalidParameter (parameter: string, message: ?string)\n"
                "\n"
                "# Client is denied access\n"
                "error PermissionDenied ()\n"
                "\n"
                "# Method is expected to be called with 'more' set to true, but wasn't\n"
                "error ExpectedMore (message: ?string)\n",
        .methods = varlink_methods,
};
