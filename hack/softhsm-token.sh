# Sourced by hack scripts: points SoftHSM2 at $DIR/tokens and makes sure a
# token labelled $PODKEY_HSM_TOKEN exists, with random PINs kept in
# $DIR/pin and $DIR/so-pin (mode 0600). Exports what podkey reads.
mkdir -p "$DIR/tokens" && chmod 700 "$DIR"
export SOFTHSM2_CONF="$DIR/softhsm2.conf"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$DIR" > "$SOFTHSM2_CONF"
export PODKEY_HSM_PIN_FILE="$DIR/pin"
if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*$PODKEY_HSM_TOKEN"; then
  (
    umask 077
    head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/pin"
    head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/so-pin"
  )
  softhsm2-util --init-token --free --label "$PODKEY_HSM_TOKEN" \
    --pin "$(cat "$DIR/pin")" --so-pin "$(cat "$DIR/so-pin")" >/dev/null
  echo "SoftHSM2 token $PODKEY_HSM_TOKEN initialised; PIN in $DIR/pin (mode 0600)"
fi
