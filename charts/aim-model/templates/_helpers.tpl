{{/* The InferenceService's name: `name`, else the release's. */}}
{{- define "aim-model.name" -}}
{{- .Values.name | default .Release.Name -}}
{{- end -}}

{{/* The values a render needs, refused with what to do when missing. */}}
{{- define "aim-model.check" -}}
{{- if not .Values.plan.recipe -}}
{{- fail "plan: empty; write this model's values with `aim-runtime render --model-dir MODEL --gpu GPU --output helm-values`" -}}
{{- end -}}
{{- if not .Values.storageUri -}}
{{- fail "storageUri: empty; give pvc://, s3://, oci:// or hf:// (render writes it from --storage-uri or --model-id)" -}}
{{- end -}}
{{- if gt (int .Values.plan.nodes) 1 -}}
{{- if ne .Values.mode "standard" -}}
{{- fail (printf "mode: %s with plan.nodes %v; KServe runs multi-node only in Standard mode" .Values.mode .Values.plan.nodes) -}}
{{- end -}}
{{- if not (or (hasPrefix "pvc://" .Values.storageUri) (hasPrefix "oci://" .Values.storageUri)) -}}
{{- fail (printf "storageUri: %s with plan.nodes %v; every node reads the same weights, so KServe requires pvc:// (ReadWriteMany) or oci://" .Values.storageUri .Values.plan.nodes) -}}
{{- end -}}
{{- if .Values.lora.claimName -}}
{{- fail "lora.claimName with plan.nodes > 1: every node's vLLM worker reads the adapters, and only the head mounts them" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.serviceAccount.create (not .Values.serviceAccountName) -}}
{{- fail "serviceAccount.create: true needs serviceAccountName, the name to create (render --service-account)" -}}
{{- end -}}
{{- if .Values.modelCache.enabled -}}
{{- if not (include "aim-model.cachePath" .) -}}
{{- fail (printf "modelCache.enabled with storageUri %s: the cache is the claim storageUri names; give pvc://CLAIM/PATH" .Values.storageUri) -}}
{{- end -}}
{{- if not (include "aim-model.modelId" .) -}}
{{- fail "modelCache.enabled: the download Job needs the model's id, the plan's AIM_MODEL_ID (render --model-id)" -}}
{{- end -}}
{{- end -}}
{{- if .Values.autoscaling.keda.enabled -}}
{{- if or (ne .Values.mode "standard") (gt (int .Values.plan.nodes) 1) -}}
{{- fail "autoscaling.keda.enabled: KServe's KEDA autoscaling is for Standard mode on one node (Knative scales revisions itself; multi-node does not scale)" -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.kind "LLMInferenceService" -}}
{{- $refused := dict "mode: knative" (ne .Values.mode "standard") "canaryTrafficPercent (split traffic with the route instead)" (ne .Values.canaryTrafficPercent nil) "compileCache.claimName" (ne .Values.compileCache.claimName "") "lora.claimName (use spec.model.lora)" (ne .Values.lora.claimName "") "autoscaling.keda.enabled" .Values.autoscaling.keda.enabled "networkPolicy.enabled (llm-d's scheduler in this namespace reads the pods too)" .Values.networkPolicy.enabled "serviceMonitor.enabled" .Values.serviceMonitor.enabled "apiKeySecret.name (set AIM_API_KEY in the preset or spec.template)" (ne .Values.apiKeySecret.name "") -}}
{{- range $option, $given := $refused -}}
{{- if $given -}}
{{- fail (printf "%s: not available with kind LLMInferenceService" $option) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.prefillReplicas (gt (int .Values.plan.nodes) 1) -}}
{{- fail "prefillReplicas with plan.nodes > 1: a prefill/decode split across nodes is not rendered yet" -}}
{{- end -}}
{{- else if .Values.prefillReplicas -}}
{{- fail "prefillReplicas: kind LLMInferenceService only" -}}
{{- end -}}
{{- if and (ne .Values.canaryTrafficPercent nil) (ne .Values.mode "knative") -}}
{{- fail "canaryTrafficPercent: Knative mode only; a Standard-mode canary extends the running InferenceService (aim-runtime render --canary-of --stable)" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object: the service's own, then Helm's. */}}
{{- define "aim-model.labels" -}}
app.kubernetes.io/name: {{ include "aim-model.name" . }}
app.kubernetes.io/part-of: aim-runtime
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Pod fields shared by the predictor and the multi-node workers. Knative sets the
termination grace period itself (to the revision timeout) and refuses ours. */}}
{{- define "aim-model.placement" -}}
{{- if eq .Values.mode "standard" -}}
terminationGracePeriodSeconds: 120
{{ end -}}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: amd.com/gpu.device-id
              operator: In
              values: {{ toJson .Values.plan.deviceIds }}
securityContext:
  runAsNonRoot: true
  seccompProfile:
    type: RuntimeDefault
  supplementalGroups: {{ toJson .Values.supplementalGroups }}
volumes:
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ printf "%vGi" .Values.plan.shmSizeGi }}
{{- if .Values.compileCache.claimName }}
  - name: compile-cache
    persistentVolumeClaim:
      claimName: {{ .Values.compileCache.claimName }}
{{- end }}
{{- end -}}

{{/* The runtime image: repository and tag (the chart's appVersion unless given; never latest). */}}
{{- define "aim-model.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag: latest is refused; pin a version (empty means the chart's appVersion)" -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* The model's id: the plan's AIM_MODEL_ID pin (empty without one). */}}
{{- define "aim-model.modelId" -}}
{{- range .Values.plan.env -}}
{{- if eq .name "AIM_MODEL_ID" }}{{ .value }}{{ end -}}
{{- end -}}
{{- end -}}

{{/* The claim and the path in it of a pvc://CLAIM/PATH storageUri (empty otherwise). */}}
{{- define "aim-model.cacheClaim" -}}
{{- if hasPrefix "pvc://" .Values.storageUri -}}
{{- (splitn "/" 2 (trimPrefix "pvc://" .Values.storageUri))._0 -}}
{{- end -}}
{{- end -}}
{{- define "aim-model.cachePath" -}}
{{- if hasPrefix "pvc://" .Values.storageUri -}}
{{- (splitn "/" 2 (trimPrefix "pvc://" .Values.storageUri))._1 -}}
{{- end -}}
{{- end -}}

{{/* An LLMInferenceService pod (spec.template, spec.worker, spec.prefill.template): the plan's
GPUs, node affinity and /dev/shm; `env` (a list, or nil for the workers) in its main container. */}}
{{- define "aim-model.llmPod" -}}
{{- $ctx := index . 0 -}}
{{- $env := index . 1 -}}
{{- with $ctx.Values -}}
terminationGracePeriodSeconds: 120
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: amd.com/gpu.device-id
              operator: In
              values: {{ toJson .plan.deviceIds }}
securityContext:
  runAsNonRoot: true
  seccompProfile:
    type: RuntimeDefault
  supplementalGroups: {{ toJson .supplementalGroups }}
containers:
  - name: main
    {{- if $env }}
    env: {{ toJson $env }}
    {{- end }}
    resources:
      {{- toYaml .plan.resources | nindent 6 }}
volumes:
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ printf "%vGi" .plan.shmSizeGi }}
{{- with .serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* AIM_API_KEY from apiKeySecret (the server's keys, and the key the helm test sends). */}}
{{- define "aim-model.apiKeyEnv" -}}
{{- with .Values.apiKeySecret.name }}
- name: AIM_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.apiKeySecret.key }}
{{- end }}
{{- end -}}
