#!/bin/sh
# Buildroot post-build script (BR2_ROOTFS_POST_BUILD_SCRIPT): $1 is the target dir.
# Installs what the recipe chose, staged by duo_builder in $DUO_PAYLOAD (a directory
# laid out like the target: the model, tokenizer, storyteller.conf, asound.conf).
set -eu
target="$1"
: "${DUO_PAYLOAD:?DUO_PAYLOAD must name the staged payload directory}"
cp -a "$DUO_PAYLOAD"/. "$target"/
# the SDK's own autostart hook runs /mnt/system/auto.sh; ours is S99storyteller
chmod 0755 "$target/etc/init.d/S99storyteller"
