{{/* Names: cut to 63 characters, as Kubernetes names and labels must be. */}}
{{- define "putplace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "putplace.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "putplace.operator.fullname" -}}
{{- printf "%s-operator" (include "putplace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "putplace.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "putplace.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The standard labels; pass (dict "ctx" $ "component" "operator"). */}}
{{- define "putplace.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{ include "putplace.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: putplace
{{- end }}

{{- define "putplace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "putplace.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "putplace.operator.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{/* Whether to render a monitoring.coreos.com/v1 object of this kind: asked for, and either served or forced. */}}
{{- define "putplace.monitoring" -}}
{{- $values := index . 0 }}{{ $ctx := index . 1 }}{{ $kind := index . 2 }}
{{- if and $values.enabled (or $values.force ($ctx.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind))) }}true{{ end }}
{{- end }}

{{/* Contradictory values fail the install with a message instead of a half-working release. */}}
{{- define "putplace.checks" -}}
{{- if and (not .Values.rbac.create) .Values.serviceAccount.create (not .Values.serviceAccount.name) }}
{{- fail "rbac.create=false: bind the operator's ServiceAccount yourself and name it in serviceAccount.name" }}
{{- end }}
{{- if and .Values.cleanup.enabled (not .Values.rbac.create) }}
{{- fail "cleanup.enabled needs rbac.create (its hook Job has a ClusterRole of its own): set cleanup.enabled=false and delete PutPlaceInstances and ApiKeys before helm uninstall" }}
{{- end }}
{{- if and .Values.instance.enabled (gt (len .Values.instance.name) 40) }}
{{- fail "instance.name: at most 40 characters (the names of its children must fit in 63)" }}
{{- end }}
{{- end }}

{{- define "putplace.cleanup.fullname" -}}
{{- printf "%s-cleanup" (include "putplace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A pre-delete hook; pass (dict "weight" "-5" "keepFailed" false). Removed once the hooks
     succeeded, and before a new attempt; a failed Job is kept (keepFailed) for its log. */}}
{{- define "putplace.cleanup.hook" -}}
helm.sh/hook: pre-delete
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: {{ if .keepFailed }}before-hook-creation,hook-succeeded{{ else }}before-hook-creation,hook-succeeded,hook-failed{{ end }}
{{- end }}
