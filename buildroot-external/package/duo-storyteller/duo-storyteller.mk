################################################################################
#
# duo-storyteller: built from this repository's engine/ (no download, no hash)
#
################################################################################

DUO_STORYTELLER_VERSION = local
DUO_STORYTELLER_SITE = $(BR2_EXTERNAL_DUO_STORYTELLER_PATH)/../engine
DUO_STORYTELLER_SITE_METHOD = local
DUO_STORYTELLER_LICENSE = MIT
DUO_STORYTELLER_DEPENDENCIES = espeak-ng pocketsphinx alsa-lib host-pkgconf

# Every library below comes from staging through pkg-config (espeak-ng, pocketsphinx,
# alsa): Buildroot's own espeak 1.48 installs nothing to staging, hence our espeak-ng.
define DUO_STORYTELLER_BUILD_CMDS
	$(TARGET_MAKE_ENV) $(MAKE) -C $(@D) O=$(@D)/out \
		CC="$(TARGET_CC)" AR="$(TARGET_AR)" \
		CFLAGS="$(TARGET_CFLAGS) $(call qstrip,$(BR2_PACKAGE_DUO_STORYTELLER_CFLAGS))" \
		LDFLAGS="$(TARGET_LDFLAGS)" \
		KERNELS=$(call qstrip,$(BR2_PACKAGE_DUO_STORYTELLER_KERNELS)) \
		PROGRAMS="llama2 storyteller" TTS=espeak-ng AUDIO=alsa \
		PKG_CONFIG="$(PKG_CONFIG_HOST_BINARY)" all
endef

define DUO_STORYTELLER_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/out/llama2 $(TARGET_DIR)/usr/bin/llama2
	$(INSTALL) -D -m 0755 $(@D)/out/storyteller $(TARGET_DIR)/usr/bin/storyteller
	$(INSTALL) -D -m 0644 $(@D)/storyteller/story.dict \
		$(TARGET_DIR)/usr/share/storyteller/story.dict
endef

$(eval $(generic-package))
