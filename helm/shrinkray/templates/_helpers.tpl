{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "shrinkray.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix: RELEASE-shrinkray, or the release name when it already contains the chart name. */}}
{{- define "shrinkray.fullname" -}}
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

{{/* chart label value: NAME-VERSION */}}
{{- define "shrinkray.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (app.kubernetes.io/*) of every resource. */}}
{{- define "shrinkray.labels" -}}
helm.sh/chart: {{ include "shrinkray.chart" . }}
{{ include "shrinkray.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shrinkray
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: name and instance (add app.kubernetes.io/component per workload). */}}
{{- define "shrinkray.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shrinkray.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shrinkray.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "shrinkray.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The coordinator's address for workers and tests: SERVICE.NAMESPACE.svc:PORT */}}
{{- define "shrinkray.coordinator.address" -}}
{{- printf "%s.%s.svc:%v" (include "shrinkray.coordinator.fullname" .) .Release.Namespace .Values.coordinator.grpcPort }}
{{- end }}

{{/* The name the coordinator's TLS certificate is checked against. */}}
{{- define "shrinkray.tls.serverName" -}}
{{- default (printf "%s.%s.svc" (include "shrinkray.coordinator.fullname" .) .Release.Namespace) .Values.tls.serverName }}
{{- end }}

{{- define "shrinkray.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shrinkray.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the bearer token, and its key. */}}
{{- define "shrinkray.auth.secretName" -}}
{{- default (printf "%s-token" (include "shrinkray.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The shared model/data claim. */}}
{{- define "shrinkray.storage.claimName" -}}
{{- default (printf "%s-storage" (include "shrinkray.fullname" .)) .Values.storage.existingClaim }}
{{- end }}

{{/* An image reference; call with (dict "image" .Values.x.image "root" $). */}}
{{- define "shrinkray.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Pod volumes shared by the coordinator and the workers: storage, token, TLS. */}}
{{- define "shrinkray.commonVolumes" -}}
{{- if .Values.storage.enabled }}
- name: storage
  persistentVolumeClaim:
    claimName: {{ include "shrinkray.storage.claimName" . }}
{{- end }}
{{- if .Values.auth.enabled }}
- name: token
  secret:
    secretName: {{ include "shrinkray.auth.secretName" . }}
    items:
      - key: {{ .Values.auth.secretKey }}
        path: token
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.existingSecret is required when tls.enabled" .Values.tls.existingSecret }}
{{- end }}
{{- end }}

{{- define "shrinkray.commonVolumeMounts" -}}
{{- if .Values.storage.enabled }}
- name: storage
  mountPath: {{ .Values.storage.mountPath }}
  {{- with .Values.storage.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- if .Values.auth.enabled }}
- name: token
  mountPath: /etc/shrinkray/token
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/shrinkray/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* Relabelling shared by the ServiceMonitor and the PodMonitor: job from the
component (shrinkray-coordinator / shrinkray-worker), instance = pod name. */}}
{{- define "shrinkray.monitoringRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_component]
  regex: (.+)
  targetLabel: job
  replacement: shrinkray-$1
- sourceLabels: [__meta_kubernetes_pod_name]
  targetLabel: instance
- sourceLabels: [__meta_kubernetes_pod_label_shrinkray_io_worker_group]
  regex: (.+)
  targetLabel: worker_group
{{- end }}
