// Validates custom resources against the JSON schemas of their CRDs, as packaged by
// @kubernetes-models. Reads a JSON array of objects on stdin; prints a JSON array of
// {kind, name, error} for each object that fails (or whose kind has no schema here).
"use strict";

const models = {
  "argoproj.io/v1alpha1/Rollout": () =>
    require("@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1/Rollout").Rollout,
  "argoproj.io/v1alpha1/AnalysisTemplate": () =>
    require("@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1/AnalysisTemplate").AnalysisTemplate,
  "networking.istio.io/v1beta1/VirtualService": () =>
    require("@kubernetes-models/istio/networking.istio.io/v1beta1/VirtualService").VirtualService,
  "monitoring.coreos.com/v1/ServiceMonitor": () =>
    require("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor").ServiceMonitor,
  // The packaged Gateway API models stop at GRPCRoute v1alpha2, whose spec v1 kept unchanged.
  "gateway.networking.k8s.io/v1/GRPCRoute": () =>
    require("@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1alpha2/GRPCRoute").GRPCRoute,
};
const asVersion = { "gateway.networking.k8s.io/v1/GRPCRoute": "gateway.networking.k8s.io/v1alpha2" };

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const failures = [];
  for (const object of JSON.parse(input)) {
    const key = `${object.apiVersion}/${object.kind}`;
    const name = (object.metadata || {}).name;
    const model = models[key];
    if (!model) {
      failures.push({ kind: key, name, error: "no schema for this kind" });
      continue;
    }
    const copy = JSON.parse(JSON.stringify(object));
    if (asVersion[key]) copy.apiVersion = asVersion[key];
    try {
      new (model())(copy).validate();
    } catch (error) {
      failures.push({ kind: key, name, error: error.message });
    }
  }
  process.stdout.write(JSON.stringify(failures));
});
