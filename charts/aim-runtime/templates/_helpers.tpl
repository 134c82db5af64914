{{/* The runtime image: repository and tag (the chart's appVersion unless given; never latest). */}}
{{- define "aim-runtime.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag: latest is refused; pin a version (empty means the chart's appVersion)" -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* A file of files/ as an object, its image the chart's: the copies name the kustomize
default (aim-runtime-rocm:<appVersion>), as serving_runtimes/ does. */}}
{{- define "aim-runtime.object" -}}
{{- $ctx := index . 0 -}}
{{- $text := $ctx.Files.Get (index . 1) -}}
{{- $default := printf "image: aim-runtime-rocm:%s" $ctx.Chart.AppVersion -}}
{{- $text | replace $default (printf "image: %s" (include "aim-runtime.image" $ctx)) -}}
{{- end -}}

{{/* The labels Helm's own objects carry, added to each object's own. */}}
{{- define "aim-runtime.labels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
