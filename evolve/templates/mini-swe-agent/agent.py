#!/usr/bin/env python3
"""mini-swe-agent as an evolve harness: mini's own DefaultAgent, LocalEnvironment and
litellm text-based model, configured by config.yaml, talking to evolve's endpoint.

evolve runs this with the harness's environment (requirements.txt, installed offline) and
sets, inside the sandbox:
  OPENAI_BASE_URL / OPENAI_API_KEY  the model endpoint on 127.0.0.1 and the task's token
  EVOLVE_MODEL                      the model name to ask the endpoint for
  EVOLVE_TASK_FILE, EVOLVE_REPO     the task (problem_statement) and the repository to fix
  EVOLVE_OUTPUT_DIR                 trajectory.json goes here (mini's own trajectory format)
evolve takes the fix itself (the repository's diff); the agent only edits files.
"""
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT_DIR = Path(os.environ.get("EVOLVE_OUTPUT_DIR", "/evolve/output"))

# Before mini and litellm are imported: no banner, no writes outside /tmp, no network look-ups.
os.environ.setdefault("MSWEA_SILENT_STARTUP", "1")
os.environ.setdefault("MSWEA_GLOBAL_CONFIG_DIR", "/tmp/mini-swe-agent")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# The commands the model runs are for the task's repository: they get the image's own python3
# (with its test tools), not this harness's environment, which evolve puts first on PATH.
ENV_BIN = os.path.join(os.environ.get("VIRTUAL_ENV", "/evolve/env"), "bin")
os.environ["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != ENV_BIN)
os.environ.pop("VIRTUAL_ENV", None)

import litellm  # noqa: E402  (from the harness's environment, like mini and yaml)
import yaml  # noqa: E402
from minisweagent.agents.default import DefaultAgent  # noqa: E402
from minisweagent.environments.local import LocalEnvironment  # noqa: E402
from minisweagent.models.litellm_textbased_model import LitellmTextbasedModel  # noqa: E402


# Pricing an endpoint model litellm doesn't know fails on every call; without this, litellm
# prints its provider list into harness.log each time.
litellm.suppress_debug_info = True


def main() -> int:
    config = yaml.safe_load((HERE / "config.yaml").read_text(encoding="utf-8"))
    task = json.loads(Path(os.environ.get("EVOLVE_TASK_FILE", "/evolve/task.json")).read_text(encoding="utf-8"))
    model_cfg = dict(config.get("model", {}))
    model_kwargs = {**model_cfg.pop("model_kwargs", {}),
                    "api_base": os.environ["OPENAI_BASE_URL"], "api_key": os.environ["OPENAI_API_KEY"]}
    # litellm's openai/ provider speaks the OpenAI API to api_base. The endpoint's models have no
    # litellm price, so mini's own cost count reads 0 (evolve's gateway counts and caps the real cost).
    model = LitellmTextbasedModel(model_name=f"openai/{os.environ.get('EVOLVE_MODEL', 'default')}",
                                  model_kwargs=model_kwargs, **{"cost_tracking": "ignore_errors", **model_cfg})
    env = LocalEnvironment(cwd=os.environ.get("EVOLVE_REPO", "/testbed"), **config.get("environment", {}))
    agent = DefaultAgent(model, env, output_path=OUTPUT_DIR / "trajectory.json", **config.get("agent", {}))
    info = agent.run(task["problem_statement"])
    print(f"exit_status={info.get('exit_status')} steps={agent.n_calls}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
