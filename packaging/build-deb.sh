#!/usr/bin/env bash
# Builds a Debian package of this tree with dpkg-deb, offline:
#   packaging/build-deb.sh BUILD-DIR   → BUILD-DIR/hl7bridge_<version>_<arch>.deb
# `make install` fills the package root (binary, unit, /etc/hl7bridge/,
# /var/lib/hl7bridge/); Depends comes from dpkg-shlibdeps on the binary, so
# it names the library packages the binary really links against.
set -euo pipefail
build=$1
version=$(sed -n 's/^#define HL7BRIDGE_VERSION "\(.*\)"$/\1/p' daemon/cli.h)
arch=$(dpkg --print-architecture)
work=$build/deb
root=$work/root
rm -rf "$work"
mkdir -p "$root/DEBIAN"

make --no-print-directory install DESTDIR="$root" PREFIX=/usr SYSCONFDIR=/etc \
    LOCALSTATEDIR=/var UNITDIR=/lib/systemd/system >/dev/null
# The state directory is made (and owned by the service user) in postinst.
rmdir "$root/var/lib/hl7bridge" "$root/var/lib" "$root/var"

# dpkg-shlibdeps wants a debian/control naming the package.
mkdir -p "$work/src/debian"
printf 'Source: hl7bridge\n\nPackage: hl7bridge\nArchitecture: any\n' > "$work/src/debian/control"
bin=$(realpath "$root/usr/bin/hl7bridge")
depends=$(cd "$work/src" && dpkg-shlibdeps -O -e"$bin" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@DEPENDS@|$depends, adduser|" \
    -e "s|@SIZE@|$size|" packaging/debian/control.in > "$root/DEBIAN/control"
( cd "$root" && find etc -type f | sed 's|^|/|' | sort ) > "$root/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
    "$root/DEBIAN/"
( cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort |
  xargs md5sum ) > "$root/DEBIAN/md5sums"

out="$build/hl7bridge_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out"
