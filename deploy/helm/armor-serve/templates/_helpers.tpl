{{- define "armor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "armor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "armor.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "armor.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "armor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "armor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* Everything but the server's selector labels (the `helm test` pod must not join the Service). */}}
{{- define "armor.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "armor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "armor.labels" -}}
{{ include "armor.commonLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "armor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "armor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "armor.servedModelName" -}}
{{- default (include "armor.fullname" .) .Values.servedModelName }}
{{- end }}

{{- define "armor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "armor.claimName" -}}
{{- if eq .Values.model.volume.type "existingClaim" }}
{{- required "model.volume.existingClaim is required when model.volume.type=existingClaim" .Values.model.volume.existingClaim }}
{{- else }}
{{- printf "%s-models" (include "armor.fullname" .) }}
{{- end }}
{{- end }}

{{/* Writable caches on the cache emptyDir: the root filesystem is read-only. */}}
{{- define "armor.cacheEnv" -}}
- name: HOME
  value: {{ .Values.cache.mountPath }}
- name: XDG_CACHE_HOME
  value: {{ .Values.cache.mountPath }}
- name: ARMOR_HOME
  value: {{ printf "%s/armor" .Values.cache.mountPath }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.cache.mountPath }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: VLLM_CACHE_ROOT
  value: {{ printf "%s/vllm" .Values.cache.mountPath }}
- name: TRITON_CACHE_DIR
  value: {{ printf "%s/triton" .Values.cache.mountPath }}
- name: TORCHINDUCTOR_CACHE_DIR
  value: {{ printf "%s/inductor" .Values.cache.mountPath }}
{{- end }}

{{- define "armor.modelMount" -}}
- name: models
  mountPath: {{ .Values.model.volume.mountPath }}
{{- end }}

{{- define "armor.cacheMount" -}}
- name: cache
  mountPath: {{ .Values.cache.mountPath }}
{{- end }}
