{{/* The release's full name: the release name, with "-driftwatch" unless it already says so. */}}
{{- define "driftwatch.fullname" -}}
{{- if contains "driftwatch" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-driftwatch" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "driftwatch.selectorLabels" -}}
app.kubernetes.io/name: driftwatch
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "driftwatch.labels" -}}
{{ include "driftwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: driftwatch
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "driftwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "driftwatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "driftwatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The namespaces watched: the listed ones, or none for the whole cluster. */}}
{{- define "driftwatch.namespaced" -}}
{{- if .Values.watchNamespaces }}true{{ end -}}
{{- end -}}
