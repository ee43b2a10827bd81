"""The lab: a local Kubernetes substitute (real kube-apiserver, etcd, network namespaces).

Test infrastructure only; shipped code never imports it (see the import-linter contracts).
"""
