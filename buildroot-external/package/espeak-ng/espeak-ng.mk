################################################################################
#
# espeak-ng
#
################################################################################

# Debian's orig tarball: upstream's 1.52.0 tag (minus Windows files), on a mirror that
# keeps it for as long as Debian 13 lives, with a hash checked against Debian's signed
# index. Upstream's own release page has no source tarball of its own to pin.
ESPEAK_NG_VERSION = 1.52.0
ESPEAK_NG_SOURCE = espeak-ng_$(ESPEAK_NG_VERSION)+dfsg.orig.tar.gz
ESPEAK_NG_SITE = https://deb.debian.org/debian/pool/main/e/espeak-ng
ESPEAK_NG_LICENSE = GPL-3.0+
ESPEAK_NG_LICENSE_FILES = COPYING
ESPEAK_NG_INSTALL_STAGING = YES
# a git tree: no configure script until autoreconf
ESPEAK_NG_AUTORECONF = YES
# The voice data is compiled by espeak-ng itself (--compile-phonemes, --compile=en):
# a cross-built binary cannot run here, so the host package compiles it.
ESPEAK_NG_DEPENDENCIES = host-espeak-ng
HOST_ESPEAK_NG_DEPENDENCIES = host-pkgconf

# Only the library: no sound output (the storyteller plays through ALSA itself), no
# MBROLA or sonic, no C++ (speechPlayer), no thread of its own (async).
ESPEAK_NG_CONF_OPTS = \
	--with-pcaudiolib=no \
	--with-speechplayer=no \
	--with-mbrola=no \
	--with-sonic=no \
	--with-async=no \
	--with-extdict-ru=no \
	--with-extdict-cmn=no \
	--with-extdict-yue=no
HOST_ESPEAK_NG_CONF_OPTS = $(ESPEAK_NG_CONF_OPTS)

# What upstream's autogen.sh does before autoreconf: automake wants these files.
define ESPEAK_NG_AUTOGEN_FILES
	mkdir -p $(@D)/m4
	touch $(@D)/AUTHORS
	ln -sf ChangeLog.md $(@D)/NEWS
	ln -sf README.md $(@D)/README
	touch $(@D)/ChangeLog
endef
ESPEAK_NG_PRE_CONFIGURE_HOOKS += ESPEAK_NG_AUTOGEN_FILES
HOST_ESPEAK_NG_PRE_CONFIGURE_HOOKS += ESPEAK_NG_AUTOGEN_FILES

# English only: the phoneme tables every voice needs and the English dictionary.
ESPEAK_NG_DATA_FILES = phondata phonindex phontab intonations en_dict

define HOST_ESPEAK_NG_BUILD_CMDS
	$(HOST_MAKE_ENV) $(MAKE) -C $(@D) src/espeak-ng
	$(HOST_MAKE_ENV) $(MAKE1) -C $(@D) \
		$(addprefix espeak-ng-data/,$(ESPEAK_NG_DATA_FILES))
endef

define HOST_ESPEAK_NG_INSTALL_CMDS
	$(foreach f,$(ESPEAK_NG_DATA_FILES),\
		$(INSTALL) -D -m 0644 $(@D)/espeak-ng-data/$(f) \
			$(HOST_DIR)/share/espeak-ng-data/$(f)$(sep))
	mkdir -p $(HOST_DIR)/share/espeak-ng-data/lang/gmw \
		$(HOST_DIR)/share/espeak-ng-data/voices
	cp -p $(@D)/espeak-ng-data/lang/gmw/en* $(HOST_DIR)/share/espeak-ng-data/lang/gmw/
	cp -rp $(@D)/espeak-ng-data/voices/!v $(HOST_DIR)/share/espeak-ng-data/voices/
endef

# The library and the espeak-ng command only: `make all` would compile the data
# with the target binary.
define ESPEAK_NG_BUILD_CMDS
	$(TARGET_MAKE_ENV) $(MAKE) -C $(@D) src/libespeak-ng.la src/espeak-ng
endef

ESPEAK_NG_INSTALL_PARTS = \
	install-libLTLIBRARIES \
	install-espeak_includeHEADERS \
	install-espeak_ng_includeHEADERS \
	install-pkgconfigDATA

define ESPEAK_NG_INSTALL_STAGING_CMDS
	$(TARGET_MAKE_ENV) $(MAKE) -C $(@D) DESTDIR=$(STAGING_DIR) $(ESPEAK_NG_INSTALL_PARTS)
endef

define ESPEAK_NG_INSTALL_TARGET_CMDS
	$(TARGET_MAKE_ENV) $(MAKE) -C $(@D) DESTDIR=$(TARGET_DIR) install-libLTLIBRARIES
	cd $(@D) && ./libtool --mode=install $(INSTALL) -D -m 0755 src/espeak-ng \
		$(TARGET_DIR)/usr/bin/espeak-ng
	rm -rf $(TARGET_DIR)/usr/share/espeak-ng-data
	cp -rp $(HOST_DIR)/share/espeak-ng-data $(TARGET_DIR)/usr/share/espeak-ng-data
endef

$(eval $(autotools-package))
$(eval $(host-autotools-package))
