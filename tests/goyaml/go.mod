module goyaml

go 1.22

// sigs.k8s.io/yaml and go-yaml v2 at the versions kubectl v1.36.3 is built with
// (hack/k8sbin/go.mod).
require sigs.k8s.io/yaml v1.6.0

require go.yaml.in/yaml/v2 v2.4.3 // indirect
