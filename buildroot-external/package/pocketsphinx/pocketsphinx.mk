################################################################################
#
# pocketsphinx
#
################################################################################

# The PyPI source distribution: the C library with its CMake build and the en-us model,
# from a host whose sha256 could be checked where this was written.
POCKETSPHINX_VERSION = 5.1.1
POCKETSPHINX_SITE = https://files.pythonhosted.org/packages/source/p/pocketsphinx
POCKETSPHINX_LICENSE = BSD-2-Clause
POCKETSPHINX_LICENSE_FILES = LICENSE
POCKETSPHINX_INSTALL_STAGING = YES
POCKETSPHINX_CONF_OPTS = -DBUILD_SHARED_LIBS=ON -DBUILD_GSTREAMER=OFF

# Only the acoustic model the grammar search needs; not the 26 MB language model.
define POCKETSPHINX_INSTALL_MODEL
	mkdir -p $(TARGET_DIR)/usr/share/pocketsphinx/model/en-us
	cp -r $(@D)/model/en-us/en-us $(TARGET_DIR)/usr/share/pocketsphinx/model/en-us/
endef
POCKETSPHINX_POST_INSTALL_TARGET_HOOKS += POCKETSPHINX_INSTALL_MODEL

$(eval $(cmake-package))
