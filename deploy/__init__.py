"""Deployment files (Dockerfile, k8s/, grafana/, prometheus.yml) and the docker-compose check (`make compose-check`)."""
