#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Import (BYOK): wrap-for-import with OpenSSL, import through cmekd, then data wrapped by the
# daemon decrypts with the raw key (and the reverse); bad blobs leave nothing in the token.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd socat python3 pkcs11-tool
[ -e /usr/lib/softhsm/libsofthsm2.so ] || skip "needs SoftHSM2"
python3 -c 'import cryptography' 2>/dev/null || skip "needs python3-cryptography for the raw-key side"

start_cmekd
export SOFTHSM2_CONF=$STATE/softhsm2.conf
PIN=$(sed -n 's/^user-pin=//p' "$STATE/pins")
n_objects() {
    pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label cmekd-default --login --pin "$PIN" \
        --list-objects 2>/dev/null | grep -c "^[A-Z][a-z]* [A-Za-z ]*[Oo]bject" || true
}

cmekctl key wrapping-key --out "$TEST_TMP/wrap.pem"
grep -q "BEGIN PUBLIC KEY" "$TEST_TMP/wrap.pem" || fail "no PEM"
cmekctl key wrapping-key | cmp - "$TEST_TMP/wrap.pem" || fail "the wrapping key changed"
openssl pkey -pubin -in "$TEST_TMP/wrap.pem" -noout -text | grep -q "4096 bit" || fail "not RSA-4096"

for alg in RSA_OAEP_AES_SHA256 RSA_OAEP_SHA256; do
    head -c 32 /dev/urandom >"$TEST_TMP/raw.key"
    cmekctl key wrap-for-import --key-file "$TEST_TMP/raw.key" --public-key "$TEST_TMP/wrap.pem" \
        --wrapping-algorithm $alg --out "$TEST_TMP/blob"
    size=$(stat -c %s "$TEST_TMP/blob")
    case $alg in RSA_OAEP_AES_SHA256) [ "$size" = 552 ] ;; *) [ "$size" = 512 ] ;; esac || fail "$alg blob is $size bytes"

    # bad blobs: refused, nothing left behind
    before=$(n_objects)
    python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[-3]^=1; open(sys.argv[2],"wb").write(b)' "$TEST_TMP/blob" "$TEST_TMP/bad1"
    head -c $((size - 5)) "$TEST_TMP/blob" >"$TEST_TMP/bad2"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out "$TEST_TMP/other.key" 2>/dev/null
    openssl pkey -in "$TEST_TMP/other.key" -pubout -out "$TEST_TMP/other.pem"
    cmekctl key wrap-for-import --key-file "$TEST_TMP/raw.key" --public-key "$TEST_TMP/other.pem" \
        --wrapping-algorithm $alg --out "$TEST_TMP/bad3" >/dev/null
    for bad in bad1 bad2 bad3; do
        expect_exit "$EXIT_FAILURE" cmekctl key import "imp-$bad" --compartment prod --wrapped-file "$TEST_TMP/$bad" --wrapping-algorithm $alg
        assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.ImportFailed"
    done
    [ "$(n_objects)" = "$before" ] || fail "a bad import left objects behind ($before -> $(n_objects))"

    id=$(cmekctl --json key import "imp-$alg" --compartment prod --wrapped-file "$TEST_TMP/blob" --wrapping-algorithm $alg |
         python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["id"])')
    log "imported $id with $alg"

    # the daemon encrypts, the raw key decrypts
    r=$(cmekctl_raw "{\"method\":\"io.cmek.Key.TestEncrypt\",\"parameters\":{\"key\":\"$id\",\"plaintext\":\"c2VjcmV0IGRhdGEgMTIzNA==\",\"aad\":\"YWFk\"}}")
    python3 - "$TEST_TMP/raw.key" "$r" <<'EOF' || fail "OpenSSL could not decrypt what the token encrypted"
import base64, json, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = open(sys.argv[1], "rb").read(); p = json.loads(sys.argv[2])["parameters"]
pt = AESGCM(key).decrypt(base64.b64decode(p["iv"]), base64.b64decode(p["ciphertext"]) + base64.b64decode(p["tag"]), b"aad")
assert pt == b"secret data 1234", pt
EOF
    # the raw key encrypts, the daemon decrypts
    req=$(python3 - "$TEST_TMP/raw.key" "$id" <<'EOF'
import base64, json, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = open(sys.argv[1], "rb").read(); iv = os.urandom(12)
ct = AESGCM(key).encrypt(iv, b"from the customer", b"aad")
b = lambda x: base64.b64encode(x).decode()
print(json.dumps({"method": "io.cmek.Key.TestDecrypt", "parameters": {"key": sys.argv[2], "iv": b(iv),
      "ciphertext": b(ct[:-16]), "tag": b(ct[-16:]), "aad": b(b"aad")}}))
EOF
)
    r=$(cmekctl_raw "$req")
    [ "$(json_get "$r" parameters.plaintext | base64 -d)" = "from the customer" ] || fail "token could not decrypt: $r"
done

expect_exit "$EXIT_USAGE" cmekctl key wrap-for-import --key-file /dev/null --public-key "$TEST_TMP/wrap.pem" --out "$TEST_TMP/x"
grep -q '"event":"key.imported"' "$STATE/audit.log" || fail "import not audited"
log "ok"
