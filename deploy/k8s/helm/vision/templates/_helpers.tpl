{{/* Names: "<release>-<service>", or "<release>-vision-<service>" when the release name lacks "vision". */}}
{{- define "vision.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The four gRPC services, with what the chart fixes about them: ports as in the README (healthPort: the
     plaintext grpc.health.v1 port for the kubelet's probes, with tls.enabled only; metricsPort: GET /metrics,
     plain HTTP, for Prometheus); stopSeconds is how long the service may take after draining (unloading
     models; the trainer also stops its job's worker process, up to 25 s). */}}
{{- define "vision.grpcServices" -}}
classifier: {port: 50051, healthPort: 50061, metricsPort: 9101, prefix: VISION_CLASSIFIER_, stopSeconds: 15}
explain: {port: 50052, healthPort: 50062, metricsPort: 9102, prefix: VISION_EXPLAIN_, stopSeconds: 15}
detector: {port: 50053, healthPort: 50063, metricsPort: 9103, prefix: VISION_DETECTOR_, stopSeconds: 15}
trainer: {port: 50054, healthPort: 50064, metricsPort: 9104, prefix: VISION_TRAINER_, stopSeconds: 35}
{{- end -}}

{{- define "vision.gatewayPort" -}}8000{{- end -}}
{{- define "vision.gatewayMetricsPort" -}}9100{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "classifier") */}}
{{- define "vision.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* All labels of one component: (dict "root" $ "component" "classifier"); component may be "". */}}
{{- define "vision.labels" -}}
{{ include "vision.selectorLabels" . }}
app.kubernetes.io/part-of: vision
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Image reference of one service: (dict "root" $ "svc" .Values.classifier "torch" true); the images with torch
     get global.image.torchTagSuffix ("-cpu": the CPU builds) after their tag. */}}
{{- define "vision.image" -}}
{{- $g := .root.Values.global.image -}}
{{- $tag := .svc.image.tag | default $g.tag | default .root.Chart.AppVersion -}}
{{- if .torch -}}
{{- $tag = printf "%s%s" $tag ($g.torchTagSuffix | default "") -}}
{{- end -}}
{{- if $g.registry -}}
{{- printf "%s/%s:%s" $g.registry .svc.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .svc.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* A value as an environment string: whole numbers stay whole (Helm reads YAML numbers as float64). */}}
{{- define "vision.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . | toString -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Environment of every process (the shared ConfigMap). */}}
{{- define "vision.sharedEnv" -}}
{{- $g := .Values.global -}}
VISION_LOG_LEVEL: {{ $g.log.level | quote }}
VISION_LOG_JSON: {{ include "vision.envValue" $g.log.json | quote }}
VISION_MAX_IMAGE_BYTES: {{ include "vision.envValue" $g.maxImageBytes | quote }}
{{- if .Values.tls.enabled }}
VISION_TLS_CA_FILE: {{ printf "%s/ca.crt" (include "vision.tlsDir" .) | quote }}
VISION_TLS_CERT_FILE: {{ printf "%s/tls.crt" (include "vision.tlsDir" .) | quote }}
VISION_TLS_KEY_FILE: {{ printf "%s/tls.key" (include "vision.tlsDir" .) | quote }}
VISION_TLS_TRUSTED_CLIENTS: {{ include "vision.gatewayClientName" . | quote }}
{{- end }}
{{- end -}}

{{/* Mutual TLS: where each pod finds its cert-manager Secret (tls.crt, tls.key, ca.crt), the name the
     gateway's client certificate carries (the services let only it assert a caller), and the issuer. */}}
{{- define "vision.tlsDir" -}}/etc/vision/tls{{- end -}}
{{- define "vision.gatewayClientName" -}}vision-gateway{{- end -}}
{{- define "vision.tlsSecret" -}}{{ include "vision.fullname" .root }}-{{ .component }}-tls{{- end -}}
{{- define "vision.tlsIssuerRef" -}}
{{- if .Values.tls.issuerRef.name -}}
name: {{ .Values.tls.issuerRef.name }}
kind: {{ .Values.tls.issuerRef.kind | default "Issuer" }}
group: {{ .Values.tls.issuerRef.group | default "cert-manager.io" }}
{{- else -}}
name: {{ include "vision.fullname" . }}-ca
kind: Issuer
group: cert-manager.io
{{- end -}}
{{- end -}}

{{/* The gateway's API-key file, in a directory mount of auth.keysSecret. */}}
{{- define "vision.authDir" -}}/etc/vision/auth{{- end -}}
{{- define "vision.jwksDir" -}}/etc/vision/jwks{{- end -}}

{{/* Environment of one gRPC service: (dict "root" $ "name" "classifier"). The chart's own keys win over
     `config` where they must agree with the pod spec (host, port, paths, shutdown timing). */}}
{{- define "vision.grpcEnv" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values .name -}}
{{- $facts := index (include "vision.grpcServices" $root | fromYaml) .name -}}
{{- $p := $facts.prefix -}}
{{- /* cuda, never auto, on a GPU: a pod whose CUDA does not work fails at start instead of quietly running on
       the CPU while it holds a GPU. */ -}}
{{- $env := dict (printf "%sDEVICE" $p) (ternary "cuda" "cpu" (gt (int $svc.gpu) 0)) -}}
{{- range $key, $value := $svc.config -}}
{{- $_ := set $env $key (include "vision.envValue" $value) -}}
{{- end -}}
{{- $_ := set $env (printf "%sHOST" $p) "0.0.0.0" -}}
{{- $_ := set $env (printf "%sPORT" $p) (toString $facts.port) -}}
{{- $_ := set $env (printf "%sMETRICS_PORT" $p) (toString $facts.metricsPort) -}}
{{- $_ := set $env (printf "%sSHUTDOWN_DELAY_SECONDS" $p) (include "vision.envValue" $svc.shutdown.delaySeconds) -}}
{{- $_ := set $env (printf "%sGRACE_SECONDS" $p) (include "vision.envValue" $svc.shutdown.graceSeconds) -}}
{{- $_ := set $env "VISION_MODEL_DIR" "/models" -}}
{{- $_ := set $env "VISION_MAX_IMAGE_PIXELS" (include "vision.envValue" $root.Values.global.maxImagePixels) -}}
{{- if $root.Values.tls.enabled -}}
{{- $_ := set $env (printf "%sHEALTH_PORT" $p) (toString $facts.healthPort) -}}
{{- end -}}
{{- if eq .name "trainer" -}}
{{- $_ := set $env "VISION_DATA_DIR" "/data" -}}
{{- $_ := set $env "VISION_TRAINER_KAGGLEHUB_CACHE" "/data/kagglehub" -}}
{{- if gt (int $svc.gpu) 0 -}}
{{- /* Distributed jobs (backend kubernetes): each job pod takes the trainer's GPUs, on the nodes the trainer's
       pod may go to. */ -}}
{{- $_ := set $env "VISION_TRAINER_KUBERNETES_GPUS_PER_POD" (toString (int $svc.gpu)) -}}
{{- $nodeSelector := merge (deepCopy $svc.nodeSelector) $root.Values.global.gpu.nodeSelector -}}
{{- $tolerations := concat $root.Values.global.gpu.tolerations $svc.tolerations -}}
{{- $_ := set $env "VISION_TRAINER_KUBERNETES_POD_CONFIG" (dict "nodeSelector" $nodeSelector "tolerations" $tolerations | toJson) -}}
{{- end -}}
{{- if eq $svc.backend "kubernetes" -}}
{{- /* The job pods run the trainer's image and mount the trainer's two claims. */ -}}
{{- $_ := set $env "VISION_TRAINER_BACKEND" "kubernetes" -}}
{{- $_ := set $env "VISION_TRAINER_KUBERNETES_IMAGE" (include "vision.image" (dict "root" $root "svc" $svc "torch" true)) -}}
{{- $_ := set $env "VISION_TRAINER_KUBERNETES_MODELS_CLAIM" (include "vision.modelStoreClaim" $root) -}}
{{- $_ := set $env "VISION_TRAINER_KUBERNETES_DATA_CLAIM" (include "vision.trainerDataClaim" $root) -}}
{{- end -}}
{{- end -}}
{{- range $key := keys $env | sortAlpha }}
{{ $key }}: {{ index $env $key | quote }}
{{- end -}}
{{- end -}}

{{/* Environment of the gateway: the addresses of the enabled services, then `config`. */}}
{{- define "vision.gatewayEnv" -}}
{{- $root := . -}}
{{- $env := dict -}}
{{- range $key, $value := .Values.gateway.config -}}
{{- $_ := set $env $key (include "vision.envValue" $value) -}}
{{- end -}}
{{- $auth := .Values.auth -}}
{{- $_ := set $env "VISION_AUTH_REQUIRED" (toString $auth.required) -}}
{{- if $auth.keysSecret -}}
{{- $_ := set $env "VISION_AUTH_KEYS_FILE" (printf "%s/keys.json" (include "vision.authDir" .)) -}}
{{- end -}}
{{- with $auth.jwt -}}
{{- if .issuer -}}
{{- $_ := set $env "VISION_AUTH_JWT_ISSUER" .issuer -}}
{{- $_ := set $env "VISION_AUTH_JWT_AUDIENCE" .audience -}}
{{- $_ := set $env "VISION_AUTH_JWT_ROLE_CLAIM" .roleClaim -}}
{{- if .jwksUrl -}}
{{- $_ := set $env "VISION_AUTH_JWT_JWKS_URL" .jwksUrl -}}
{{- end -}}
{{- if .jwksConfigMap -}}
{{- $_ := set $env "VISION_AUTH_JWT_JWKS_FILE" (printf "%s/jwks.json" (include "vision.jwksDir" $root)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $env "VISION_GATEWAY_HOST" "0.0.0.0" -}}
{{- $_ := set $env "VISION_GATEWAY_PORT" (include "vision.gatewayPort" .) -}}
{{- $_ := set $env "VISION_GATEWAY_METRICS_PORT" (include "vision.gatewayMetricsPort" .) -}}
{{- $_ := set $env "VISION_GATEWAY_DRAIN_S" (include "vision.envValue" .Values.gateway.drainSeconds) -}}
{{- range $name, $facts := include "vision.grpcServices" . | fromYaml -}}
{{- if (index $root.Values $name).enabled -}}
{{- $addr := include "vision.grpcTarget" (dict "root" $root "name" $name "port" $facts.port) -}}
{{- $_ := set $env (printf "VISION_GATEWAY_%s_ADDR" (upper $name)) $addr -}}
{{- end -}}
{{- end -}}
{{- range $key := keys $env | sortAlpha }}
{{ $key }}: {{ index $env $key | quote }}
{{- end -}}
{{- end -}}

{{/* The gateway's gRPC target of one service: its headless Service, every ready pod's address (dns:/// is
     gRPC's DNS resolver, which round_robin spreads calls over): (dict "root" $ "name" "classifier" "port" 50051) */}}
{{- define "vision.headlessName" -}}{{ include "vision.fullname" .root }}-{{ .name }}-headless{{- end -}}
{{- define "vision.grpcTarget" -}}
{{- printf "dns:///%s.%s.svc.%s:%v" (include "vision.headlessName" .) .root.Release.Namespace .root.Values.global.clusterDomain .port -}}
{{- end -}}

{{/* Pod- and container-level security: global.podSecurityContext / containerSecurityContext (Pod Security
     "restricted" by default) under the service's own: (dict "root" $ "svc" .Values.classifier); svc may be {}. */}}
{{- define "vision.podSecurityContext" -}}
{{- $own := .svc.podSecurityContext | default dict -}}
{{- toYaml (merge (deepCopy $own) (deepCopy .root.Values.global.podSecurityContext)) -}}
{{- end -}}

{{- define "vision.containerSecurityContext" -}}
{{- $own := .svc.containerSecurityContext | default dict -}}
{{- toYaml (merge (deepCopy $own) (deepCopy .root.Values.global.containerSecurityContext)) -}}
{{- end -}}

{{/* The rollout of a Deployment with several replicas: (dict "svc" .Values.classifier "gpu" 1) */}}
{{- define "vision.strategy" -}}
{{- if .svc.strategy -}}
{{- toYaml .svc.strategy -}}
{{- else if gt (int .gpu) 0 -}}
{{- /* No surge pod: it would need a free GPU, which a full node pool does not have. */ -}}
type: RollingUpdate
rollingUpdate:
  maxSurge: 0
  maxUnavailable: 1
{{- else -}}
type: RollingUpdate
rollingUpdate:
  maxSurge: 25%
  maxUnavailable: 0
{{- end -}}
{{- end -}}

{{/* Replicas balanced over nodes and zones (global.topologySpread), or the service's own constraints:
     (dict "root" $ "svc" .Values.classifier "component" "classifier"); empty when off. pod-template-hash: a
     rollout's new pods are balanced among themselves. */}}
{{- define "vision.topologySpread" -}}
{{- $spread := .root.Values.global.topologySpread -}}
{{- if .svc.topologySpreadConstraints -}}
{{- toYaml .svc.topologySpreadConstraints -}}
{{- else if $spread.enabled -}}
{{- $ctx := dict "root" .root "component" .component -}}
{{- range $key, $when := dict "kubernetes.io/hostname" $spread.hostname "topology.kubernetes.io/zone" $spread.zone }}
- maxSkew: {{ $spread.maxSkew }}
  topologyKey: {{ $key }}
  whenUnsatisfiable: {{ $when }}
  labelSelector:
    matchLabels:
      {{- include "vision.selectorLabels" $ctx | nindent 6 }}
  matchLabelKeys: [pod-template-hash]
{{- end }}
{{- end -}}
{{- end -}}

{{/* torch's threads follow the container's CPU limit (whole cores, rounded up), not the node's cores:
     (dict "variable" "VISION_TORCH_THREADS"), the service's setting, then OMP_NUM_THREADS for OpenMP. */}}
{{- define "vision.torchThreadsEnv" -}}
{{- range list .variable "OMP_NUM_THREADS" }}
- name: {{ . }}
  valueFrom:
    resourceFieldRef:
      resource: limits.cpu
      divisor: "1"
{{- end }}
{{- end -}}

{{- define "vision.modelStoreClaim" -}}
{{- .Values.global.modelStore.existingClaim | default (printf "%s-models" (include "vision.fullname" .)) -}}
{{- end -}}

{{- define "vision.trainerDataClaim" -}}
{{- .Values.trainer.persistence.existingClaim | default (printf "%s-trainer-data" (include "vision.fullname" .)) -}}
{{- end -}}

{{- define "vision.kaggleSecret" -}}
{{- .Values.global.auth.kaggle.existingSecret | default (printf "%s-kaggle" (include "vision.fullname" .)) -}}
{{- end -}}
