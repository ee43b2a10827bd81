{{/*
Names. Every object is "<prefix>-<component>"; the prefix is the release name unless
fullnameOverride is set. Cluster-scoped objects carry the same prefix, so two releases
with different names never collide (one release per cluster is the supported setup:
the CRDs are cluster-wide).
*/}}
{{- define "ksg.prefix" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "ksg.operator" -}}{{ include "ksg.prefix" . }}-operator{{- end -}}
{{- define "ksg.agent" -}}{{ include "ksg.prefix" . }}-agent{{- end -}}
{{- define "ksg.webhook" -}}{{ include "ksg.prefix" . }}-webhook{{- end -}}
{{/* "true" when the readiness gate is on (it rides on the admission server). */}}
{{- define "ksg.gateOn" -}}
{{- if and .Values.webhook.enabled .Values.readinessGate.enabled }}true{{ end -}}
{{- end -}}
{{- define "ksg.gate" -}}{{ include "ksg.prefix" . }}-gate{{- end -}}
{{- define "ksg.webhookSecret" -}}{{ include "ksg.prefix" . }}-webhook-tls{{- end -}}
{{- define "ksg.cleanup" -}}{{ include "ksg.prefix" . }}-cleanup{{- end -}}
{{- define "ksg.lease" -}}{{ include "ksg.prefix" . }}-operator{{- end -}}

{{/* The ServiceAccount user names, as the API server authenticates their tokens. */}}
{{- define "ksg.operatorUser" -}}system:serviceaccount:{{ .Release.Namespace }}:{{ include "ksg.operator" . }}{{- end -}}
{{- define "ksg.agentUser" -}}system:serviceaccount:{{ .Release.Namespace }}:{{ include "ksg.agent" . }}{{- end -}}

{{/* Labels on every object; "component" is added per object. */}}
{{- define "ksg.labels" -}}
app.kubernetes.io/name: kube-secgroups
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: pass (list $ "operator"). */}}
{{- define "ksg.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: kube-secgroups
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "ksg.componentLabels" -}}
{{- $ := index . 0 -}}
{{ include "ksg.labels" $ }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "ksg.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- define "ksg.agentImage" -}}
{{ .Values.agent.image.repository }}:{{ .Values.agent.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The enforced-namespace label, split; fails early on a value that is not key=value. */}}
{{- define "ksg.enforceKey" -}}
{{- $parts := splitList "=" .Values.enforcedNamespaceLabel -}}
{{- if ne (len $parts) 2 -}}
{{- fail (printf "enforcedNamespaceLabel must be key=value, got %q" .Values.enforcedNamespaceLabel) -}}
{{- end -}}
{{- index $parts 0 -}}
{{- end -}}

{{- define "ksg.enforceValue" -}}
{{- $_ := include "ksg.enforceKey" . -}}
{{- index (splitList "=" .Values.enforcedNamespaceLabel) 1 -}}
{{- end -}}

{{/* How the API server reaches the operator's admission server (docs/admission.md):
pass (list $ "/validate") or (list $ "/mutate"). */}}
{{- define "ksg.webhookClient" -}}
{{- $ := index . 0 -}}
service:
  name: {{ include "ksg.webhook" $ }}
  namespace: {{ $.Release.Namespace }}
  path: {{ index . 1 }}
  port: 443
{{- end -}}

{{/* Container security context shared by the operator, the uninstall Job. */}}
{{- define "ksg.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The agent's (and the node cleanup's) container security context: root, since added
capabilities are effective only for root, but only agent.capabilities (NET_ADMIN for
nftables and conntrack; docs/install.md). */}}
{{- define "ksg.agentContainer" -}}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsUser: 0
runAsNonRoot: false
capabilities:
  drop: ["ALL"]
  add: {{ toJson .Values.agent.capabilities }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}


{{/* The CNI plugin's installer (docs/cni.md): arguments, mounts, host volumes. */}}
{{- define "ksg.cniInstallArgs" -}}
- install
- --conf-dir=/host/etc/cni/net.d
- --bin-dir=/host/opt/cni/bin
- --conf-name={{ .Values.cni.confName }}
- --socket=/var/run/secgroups/cni.sock
- --timeout={{ .Values.cni.timeoutSeconds }}
{{- with .Values.cni.exemptNamespaces }}
- --exempt-namespaces={{ join "," . }}
{{- end }}
{{- end -}}

{{- define "ksg.cniMounts" -}}
- name: host-cni-conf
  mountPath: /host/etc/cni/net.d
- name: host-cni-bin
  mountPath: /host/opt/cni/bin
{{- end -}}

{{- define "ksg.cniVolumes" -}}
- name: host-cni-conf
  hostPath:
    path: {{ .Values.cni.confDir }}
    type: DirectoryOrCreate
- name: host-cni-bin
  hostPath:
    path: {{ .Values.cni.binDir }}
    type: DirectoryOrCreate
- name: run-secgroups
  hostPath:
    path: /var/run/secgroups
    type: DirectoryOrCreate
{{- end -}}

{{/* The plugin installer writes two root-owned host directories as root: no capability. */}}
{{- define "ksg.cniContainer" -}}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsUser: 0
runAsNonRoot: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
