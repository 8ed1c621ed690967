# kind's base image (kind's images/base/Dockerfile, step for step) for the legacy builder (no
# COPY --chmod), on the Debian image the tests make, with Debian's runc and CNI plugins where
# kind builds them from source, and without the network-storage clients (nfs, iscsi) no test
# mounts. The build context holds kind's images/base/files and the containerd binaries; the
# code that builds it puts `ARG DEBIAN=<the Debian image>` first.
FROM $DEBIAN
COPY files/usr/local/bin/ /usr/local/bin/
COPY files/kind/ /kind/
COPY files/etc/ /etc/
COPY containerd/ /usr/local/bin/
RUN chmod 0755 /usr/local/bin/* /kind/bin /kind/bin/* \
    && find /etc/systemd/system /etc/containerd /etc/default /etc/sysctl.d /etc/crictl.yaml -type f -exec chmod 0644 {} + \
    && DEBIAN_FRONTEND=noninteractive clean-install \
      systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod libseccomp2 pigz fuse-overlayfs bash ca-certificates curl jq procps runc containernetworking-plugins \
    && mkdir -p /opt/cni/bin && ln -s /usr/lib/cni/* /opt/cni/bin/ \
    && find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete \
    && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
       /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
       /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \
    && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \
    && ln -s "$(which systemd)" /sbin/init
RUN systemctl enable kubelet.service containerd.service undo-mount-hacks.service \
    && systemctl mask systemd-binfmt.service \
    && mkdir -p /etc/kubernetes/manifests \
    && ctr oci spec \
       | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
       | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
