# The builder for the Milk-V Duo recipes: the vendor SDK (duo-buildroot-sdk-v2) and its
# Buildroot, driven by duo_builder.sdk_build with our external tree. Built and run by
# `invoke image` through the docker SDK (Docker, or Podman's Docker-compatible socket).
#
# The base is a Debian image made offline and reproducibly from Debian's packages
# (duo_builder.container.ensure_base_image: mmdebstrap minbase + import), so no registry
# is needed and the sha256 of its rootfs tarball pins it.
ARG BASE_IMAGE=localhost/duo-builder-base:bookworm
FROM ${BASE_IMAGE}

# What the vendor SDK's build.sh and Buildroot 2024.02 need (the SDK documents Ubuntu
# 22.04's equivalents), plus Python for our own build step.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        bc bison build-essential ca-certificates cmake cpio device-tree-compiler file flex \
        git genimage libncurses-dev libssl-dev mtools ninja-build pkg-config python3 \
        python3-jinja2 python3-yaml rsync scons slib squashfs-tools unzip u-boot-tools wget \
        xz-utils && \
    apt-get clean && rm -rf /var/lib/apt/lists/*

# Buildroot refuses to run as root unless told; the container is throwaway.
ENV FORCE_UNSAFE_CONFIGURE=1 LANG=C.UTF-8
WORKDIR /work
