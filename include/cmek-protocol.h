/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The cmekd wire protocol: Varlink over a Unix stream socket, NUL-terminated JSON messages. */
#pragma once

#define CMEK_DEFAULT_SOCKET "/run/cmekd/io.cmek.socket"
#define CMEK_SOCKET_ENV "CMEKD_SOCKET"

/* Largest request the daemon reads; larger ones get io.cmek.MessageTooLarge and the
 * connection is closed. Replies may be larger (a volume list of thousands of volumes). */
#define CMEK_MAX_REQUEST_SIZE (128U * 1024U)
#define CMEK_MAX_REPLY_SIZE (64U * 1024U * 1024U)

/* AES-256-GCM, as every part of the broker uses it (the cmek token's wrapped DEK, Key.Encrypt and
 * Key.Decrypt's "iv" and "tag", software-mode key sealing, the vault's token operations) */
#define CMEK_GCM_IV_SIZE 12
#define CMEK_GCM_TAG_SIZE 16

/* Varlink's own errors */
#define VARLINK_ERROR_METHOD_NOT_FOUND "org.varlink.service.MethodNotFound"
#define VARLINK_ERROR_INTERFACE_NOT_FOUND "org.varlink.service.InterfaceNotFound"
#define VARLINK_ERROR_INVALID_PARAMETER "org.varlink.service.InvalidParameter"
#define VARLINK_ERROR_METHOD_NOT_IMPLEMENTED "org.varlink.service.MethodNotImplemented"
#define VARLINK_ERROR_EXPECTED_MORE "org.varlink.service.ExpectedMore"

/* cmekd errors; each carries parameters that say what to do */
#define CMEK_ERROR_PERMISSION_DENIED "io.cmek.PermissionDenied"
#define CMEK_ERROR_KEY_NOT_FOUND "io.cmek.KeyNotFound"
#define CMEK_ERROR_KEY_DISABLED "io.cmek.KeyDisabled"
#define CMEK_ERROR_KEY_PENDING_DELETION "io.cmek.KeyPendingDeletion"
#define CMEK_ERROR_KEY_DELETED "io.cmek.KeyDeleted"
#define CMEK_ERROR_INVALID_TRANSITION "io.cmek.InvalidStateTransition"
#define CMEK_ERROR_VAULT_UNAVAILABLE "io.cmek.VaultUnavailable"
#define CMEK_ERROR_VAULT_NOT_FOUND "io.cmek.VaultNotFound"
#define CMEK_ERROR_VOLUME_NOT_FOUND "io.cmek.VolumeNotFound"
#define CMEK_ERROR_NOT_LUKS2 "io.cmek.NotLUKS2"
#define CMEK_ERROR_UNWRAP_FAILED "io.cmek.UnwrapFailed"
#define CMEK_ERROR_IMPORT_FAILED "io.cmek.ImportFailed"
#define CMEK_ERROR_MALFORMED_MESSAGE "io.cmek.MalformedMessage"
#define CMEK_ERROR_MESSAGE_TOO_LARGE "io.cmek.MessageTooLarge"
#define CMEK_ERROR_INTERNAL "io.cmek.InternalError"
#define CMEK_ERROR_AUDIT_BROKEN "io.cmek.AuditChainBroken"
/* The audit record of the operation could not be made durable: the operation was refused. */
#define CMEK_ERROR_AUDIT_UNAVAILABLE "io.cmek.AuditUnavailable"
#define CMEK_ERROR_ALREADY_EXISTS "io.cmek.AlreadyExists"
#define CMEK_ERROR_BUSY "io.cmek.Busy"
#define CMEK_ERROR_DEVICE_ERROR "io.cmek.DeviceError"
