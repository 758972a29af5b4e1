{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release-prefixed unless the release name already contains the chart name.
Kept to 40 characters so that suffixed names ("-optuna-dashboard") stay DNS labels and the
PostgreSQL StatefulSet name stays short enough for its controller-revision-hash label.
*/}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels for every object of the release.
*/}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{/*
Selector labels: minimal and immutable. Components add app.kubernetes.io/component.
*/}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubetune.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Namespaces the operator watches in Namespaces mode (release namespace when none listed),
as a de-duplicated list.
*/}}
{{- define "kubetune.watchNamespaces" -}}
{{- $ns := .Values.watch.namespaces | default (list .Release.Namespace) | uniq }}
{{- toJson $ns }}
{{- end }}

{{/*
Where the storage URL comes from: {"name": Secret, "key": key}. Fails with a clear message
when no storage is configured.
*/}}
{{- define "kubetune.storageSecretRef" -}}
{{- if .Values.storage.existingSecret }}
{{- dict "name" .Values.storage.existingSecret "key" .Values.storage.existingSecretKey | toJson }}
{{- else if .Values.storage.url }}
{{- dict "name" (printf "%s-storage" (include "kubetune.fullname" .)) "key" "storage-url" | toJson }}
{{- else if .Values.postgresql.enabled }}
{{- dict "name" (include "kubetune.postgresql.secretName" .) "key" "storage-url" | toJson }}
{{- else }}
{{- fail "kubetune needs an Optuna storage: set storage.existingSecret (recommended), storage.url, or postgresql.enabled=true" }}
{{- end }}
{{- end }}

{{- define "kubetune.tokenKeySecretRef" -}}
{{- if .Values.tokenKey.existingSecret }}
{{- dict "name" .Values.tokenKey.existingSecret "key" .Values.tokenKey.existingSecretKey | toJson }}
{{- else }}
{{- dict "name" (printf "%s-token-key" (include "kubetune.fullname" .)) "key" "token-key" | toJson }}
{{- end }}
{{- end }}

{{- define "kubetune.reportUrl" -}}
{{- if .Values.report.url }}
{{- .Values.report.url }}
{{- else }}
{{- printf "http://%s-report.%s.svc.%s:%d" (include "kubetune.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.report.service.port) }}
{{- end }}
{{- end }}

{{/*
Operator pod labels used by NetworkPolicies and Services.
*/}}
{{- define "kubetune.operatorSelectorLabels" -}}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubetune.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "kubetune.fullname" .) }}
{{- end }}

{{- define "kubetune.postgresql.secretName" -}}
{{- default (include "kubetune.postgresql.fullname" .) .Values.postgresql.existingSecret }}
{{- end }}

{{- define "kubetune.postgresql.selectorLabels" -}}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/component: postgresql
{{- end }}

{{- define "kubetune.dashboard.fullname" -}}
{{- printf "%s-optuna-dashboard" (include "kubetune.fullname" .) }}
{{- end }}

{{- define "kubetune.dashboard.selectorLabels" -}}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/component: optuna-dashboard
{{- end }}

{{/*
A random secret value that survives upgrades: reuse the value stored in the live Secret
(found with lookup during install/upgrade; lookup is empty under `helm template`).
Call with (dict "ctx" $ "name" SECRET "key" KEY "length" N).
*/}}
{{- define "kubetune.keepRandom" -}}
{{- $live := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $live $live.data (hasKey $live.data .key) }}
{{- index $live.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}

{{/*
Only what the operator calls, in the watched namespaces. No access to Secrets: the operator gets
its own Secrets as environment variables. No "get" but on Events: kopf and the operator list and
watch; the one read is of the study's aggregate per-trial Event, whose count a restarted operator
goes on from (events "patch" raises that count; kubetune/event_posting.py).
tests/chart/test_chart_install.py compares these rules with the requests of a real run;
tests/chart/rbac.py reads them back.
*/}}
{{- define "kubetune.rbacRules" -}}
- apiGroups: ["kubetune.io"]
  resources: ["tuningstudies"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["kubetune.io"]
  resources: ["tuningstudies/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "delete", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch", "get"]
{{- end }}
