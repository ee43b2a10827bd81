module secgroups.dev/cni

go 1.19

require github.com/containernetworking/cni v1.1.2
