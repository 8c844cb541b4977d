################################################################################
#
# pocketsphinx
#
################################################################################

# The PyPI source distribution: the C library with its CMake build and the en-us model.
POCKETSPHINX_VERSION = 5.1.1
POCKETSPHINX_SITE = https://files.pythonhosted.org/packages/61/e7/13e0e787ff467218de880310d79cba14424f13b87171ac44af0bde1e428c
POCKETSPHINX_LICENSE = BSD-2-Clause
POCKETSPHINX_LICENSE_FILES = LICENSE
POCKETSPHINX_INSTALL_STAGING = YES
# Buildroot passes BUILD_SHARED_LIBS itself (static or shared, as configured).
POCKETSPHINX_CONF_OPTS = -DBUILD_GSTREAMER=OFF

# What duo-storyteller reads (engine/storyteller/asr_pocketsphinx.c: `hmm` is this
# directory, `dict` is its own story.dict, no language model): the acoustic model files
# PocketSphinx's `hmm` expands to, 6.6 MB. Not the 26 MB language model, the 3.3 MB
# dictionary, the 0.8 MB phone model, nor the command-line programs.
POCKETSPHINX_MODEL_FILES = \
	feat.params mdef means noisedict sendump transition_matrices variances

define POCKETSPHINX_TRIM_TARGET
	rm -rf $(TARGET_DIR)/usr/share/pocketsphinx/model
	rm -f $(TARGET_DIR)/usr/bin/pocketsphinx $(TARGET_DIR)/usr/bin/pocketsphinx_*
	$(foreach f,$(POCKETSPHINX_MODEL_FILES),\
		$(INSTALL) -D -m 0644 $(@D)/model/en-us/en-us/$(f) \
			$(TARGET_DIR)/usr/share/pocketsphinx/model/en-us/en-us/$(f)$(sep))
endef
POCKETSPHINX_POST_INSTALL_TARGET_HOOKS += POCKETSPHINX_TRIM_TARGET

$(eval $(cmake-package))
