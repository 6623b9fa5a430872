{{/* Names and labels shared by every object of the chart. */}}
{{- define "podkey.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "podkey.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "podkey.keyd" -}}{{ include "podkey.fullname" . | trunc 58 | trimSuffix "-" }}-keyd{{- end -}}
{{- define "podkey.csi" -}}{{ include "podkey.fullname" . | trunc 59 | trimSuffix "-" }}-csi{{- end -}}
{{- define "podkey.caConfigMap" -}}{{ include "podkey.fullname" . | trunc 60 | trimSuffix "-" }}-ca{{- end -}}

{{- define "podkey.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "podkey.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: podkey
{{- end -}}

{{/* podkey.selector: labels selecting one component ("keyd" or "csi"). */}}
{{- define "podkey.selector" -}}
app.kubernetes.io/name: {{ include "podkey.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "podkey.image" -}}
{{ .image.repository }}:{{ default .root.Chart.AppVersion .image.tag }}
{{- end -}}

{{/* The keyd address podkey-csi dials. */}}
{{- define "podkey.keydAddress" -}}
{{- if .Values.csi.keydAddress -}}
{{ .Values.csi.keydAddress }}
{{- else if gt (int .Values.keyd.replicas) 1 -}}
dns:///{{ include "podkey.keyd" . }}-replicas.{{ .Release.Namespace }}.svc:{{ .Values.keyd.port }}
{{- else -}}
{{ include "podkey.keyd" . }}.{{ .Release.Namespace }}.svc:{{ .Values.keyd.port }}
{{- end -}}
{{- end -}}

{{/* The name the node agent checks in keyd's certificate ("" : the address's host). */}}
{{- define "podkey.keydServerName" -}}
{{- if .Values.csi.keydServerName -}}
{{ .Values.csi.keydServerName }}
{{- else if and (gt (int .Values.keyd.replicas) 1) (not .Values.csi.keydAddress) -}}
{{ include "podkey.keyd" . }}.{{ .Release.Namespace }}.svc
{{- end -}}
{{- end -}}

{{- define "podkey.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* Environment shared by keyd and its init container; the podkey CLI in
the keyd pod reads the same variables (kubectl exec ... podkey policy add). */}}
{{- define "podkey.keydEnv" -}}
{{- $hsm := .root.Values.keyd.hsm -}}
- {name: PODKEY_HSM_MODULE, value: {{ $hsm.module | quote }}}
- {name: PODKEY_HSM_TOKEN, value: {{ $hsm.tokenLabel | quote }}}
- {name: PODKEY_HSM_PIN_FILE, value: {{ .pinFile | quote }}}
{{- with $hsm.mechanismsFile }}
- {name: PODKEY_HSM_MECHANISMS, value: {{ . | quote }}}
{{- end }}
- {name: PODKEY_STORE, value: /var/lib/podkey/keyd.db}
- {name: PODKEY_SOCKET, value: /var/lib/podkey/keyd.sock}
- {name: TMPDIR, value: /tmp}
{{- with .root.Values.keyd.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* keyd's volumes; the default SoftHSM2 keeps its tokens in
/var/lib/podkey/softhsm-tokens (the image's SOFTHSM2_CONF). */}}
{{- define "podkey.keydMounts" -}}
- {name: data, mountPath: /var/lib/podkey}
- {name: tmp, mountPath: /tmp}
{{- with .Values.keyd.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}
