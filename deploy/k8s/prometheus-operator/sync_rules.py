"""Regenerate prometheusrule.yaml from deploy/prometheus/rules/*.yml (one source of alert rules).

python deploy/k8s/prometheus-operator/sync_rules.py
"""

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = sorted((HERE.parents[1] / "prometheus" / "rules").glob("*.yml"))


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    str,
    lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None),
)


def main() -> None:
    groups = [g for path in RULES for g in yaml.safe_load(path.read_text())["groups"]]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "neutreno-serve",
            "labels": {"app.kubernetes.io/name": "neutreno-serve"},
        },
        "spec": {"groups": groups},
    }
    header = (
        "# Generated from deploy/prometheus/rules/*.yml by sync_rules.py "
        "(tests/deploy checks they match).\n"
    )
    (HERE / "prometheusrule.yaml").write_text(
        header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)
    )


if __name__ == "__main__":
    main()
