/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Fuzz target: the audit log reader (lib/cmek-audit.c): the input is an audit log file. verify,
 * read, and open (which reads the tail, cuts a torn line and continues the chain). A log that
 * verified must still verify after open + append. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "cmek-audit.h"
#include "fuzz.h"

static char path[256];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        CmekAudit *a = NULL;
        json_object *arr = NULL;
        char *reason = NULL;
        unsigned n_lines = 0, bad = 0;
        int fd, v, r;

        if (!path[0]) {
                const char *tmp = getenv("TMPDIR");
                snprintf(path, sizeof(path), "%s/fuzz-audit.%d", tmp ?: "/tmp", (int) getpid());
        }
        (void) unlink(path);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return 0;
        if (size > 0 && write(fd, data, size) != (ssize_t) size) {
                (void) close(fd);
                return 0;
        }
        (void) close(fd);

        v = cmek_audit_verify(path, &n_lines, &bad, &reason);
        if (v == -EBADMSG && (!reason || bad == 0 || bad > n_lines))
                abort();
        free(reason);
        reason = NULL;
        if (cmek_audit_read(path, 0, &arr) >= 0)
                json_object_put(arr);

        /* the daemon's verify (checkpoints, the anchored line) agrees with the plain one */
        {
                CmekAuditVerifyInfo info = { .want_seq = 2 };
                unsigned n2 = 0, bad2 = 0;
                char *reason2 = NULL;
                int v2 = cmek_audit_verify_info(path, &info, &n2, &bad2, &reason2);
                if (v2 != v || n2 != n_lines || (v2 == -EBADMSG && bad2 != bad))
                        abort();
                if (v2 == 0 && (info.last_seq != n_lines || info.n_checkpoints > n_lines ||
                                (info.wanted.seq != 0 && info.wanted.seq != 2)))
                        abort();
                free(reason2);
                free(info.discontinuity);
        }
        /* pages from any offset: refused unless it starts a line, never a crash */
        {
                uint64_t next = 0;
                if (cmek_audit_read_page(path, 0, size / 2, 3, &arr, &next) >= 0) {
                        if (next != 0 && (next <= size / 2 || next > size))
                                abort();
                        json_object_put(arr);
                }
        }

        r = cmek_audit_open_full(path, CMEK_AUDIT_NO_JOURNAL, &a);
        if (v == 0 && r < 0)
                abort(); /* an intact log must open */
        if (r >= 0) {
                r = cmek_audit_append(a, &(CmekAuditEntry) {
                                .event = "key.created", .operation = "io.cmek.Key.Create", .result = "ok",
                                .key_id = "k", .detail = "fuzz",
                        }, 1);
                cmek_audit_close(a);
                if (v == 0 && r < 0)
                        abort();
                if (v == 0 && cmek_audit_verify(path, NULL, NULL, NULL) != 0)
                        abort(); /* the chain was continued wrongly */
        }
        (void) unlink(path);
        return 0;
}
