{{/* Names and labels shared by every template. */}}
{{- define "atlas-soar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "atlas-soar.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "atlas-soar.labels" -}}
{{ include "atlas-soar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "atlas-soar.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Environment of the API and the workers: plain settings, then the Secret by reference. */}}
{{- define "atlas-soar.env" -}}
- name: SOAR_HOME
  value: /tmp/atlas-soar
- name: SOAR_TEMPORAL_ADDRESS
  value: {{ .Values.temporal.address | quote }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- if .Values.temporal.tlsSecret }}
- name: SOAR_TEMPORAL_TLS_CERT
  value: /etc/atlas-soar/temporal-tls/tls.crt
- name: SOAR_TEMPORAL_TLS_KEY
  value: /etc/atlas-soar/temporal-tls/tls.key
- name: SOAR_TEMPORAL_TLS_CA
  value: /etc/atlas-soar/temporal-tls/ca.crt
{{- end }}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.otel.protocol | quote }}
{{- end }}
{{- end -}}

{{/* A writable /tmp (the root filesystem is read-only) and the Temporal client certificate. */}}
{{- define "atlas-soar.volumes" -}}
volumes:
  - name: tmp
    emptyDir: {}
{{- if .Values.temporal.tlsSecret }}
  - name: temporal-tls
    secret:
      secretName: {{ .Values.temporal.tlsSecret }}
{{- end }}
{{- end -}}

{{- define "atlas-soar.volumeMounts" -}}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- if .Values.temporal.tlsSecret }}
  - name: temporal-tls
    mountPath: /etc/atlas-soar/temporal-tls
    readOnly: true
{{- end }}
{{- end -}}
