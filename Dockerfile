# The builder container, built and run by `invoke image` through the docker SDK (Docker, or
# Podman's Docker-compatible socket). Two stages:
# - offline: what the offline recipe (qemu-virt-64m) needs: the kernel's source and cross
#   compiler, mmdebstrap, e2fsprogs, debootstrap (the riscv64 toolchain chroot) and Python
#   for duo_builder; the repository is bind-mounted at its own path, build/ caches shared.
# - sdk (the default): the vendor SDK (duo-buildroot-sdk-v2) and its Buildroot on top,
#   driven by duo_builder.image.bases.sdk_build with our external tree.
#
# The base is a Debian bookworm image made offline and reproducibly from Debian's packages
# (duo_builder.image.container: mmdebstrap minbase, with bookworm-updates and -security, then
# imported), so no registry is needed. The build context is this file alone: no COPY.
ARG BASE_IMAGE=localhost/duo-builder-base:bookworm
FROM ${BASE_IMAGE} AS offline

# Python from Debian (not requirements.txt's pins: no PyPI in the container); the kernel's
# tools as duo_builder.image.bases.debian.kernel_host_deps lists them.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        bc bison ca-certificates debootstrap e2fsprogs flex gcc gcc-riscv64-linux-gnu git \
        gpgv libc6-dev linux-source-6.12 make mmdebstrap perl python3 python3-numpy \
        python3-requests python3-tqdm python3-yaml xz-utils && \
    apt-get clean && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1

FROM offline AS sdk
# What the vendor SDK's build.sh and Buildroot 2024.02 need: the SDK's documented Ubuntu
# 22.04 list in bookworm's names (dosfstools: genimage's mkdosfs for the boot partition),
# less python3-pip and tree (nothing in the build uses them) and android-sdk-ext4-utils
# (eMMC images only; not in bookworm); plus genimage and Python for our own build step.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        android-sdk-libsparse-utils autoconf automake bc bison build-essential \
        ca-certificates cmake cpio curl device-tree-compiler dosfstools expect fakeroot file \
        flex genext2fs genimage git jq libncurses-dev libncurses5 libssl-dev libtool mtools \
        ninja-build openssh-client parallel pkg-config python-is-python3 python3 python3-dev \
        python3-distutils python3-jinja2 python3-yaml rsync scons slib squashfs-tools tcl \
        unzip u-boot-tools wget xz-utils && \
    apt-get clean && rm -rf /var/lib/apt/lists/*

# Buildroot refuses to run as root unless told; the container is throwaway.
ENV FORCE_UNSAFE_CONFIGURE=1
WORKDIR /work
