"""infra/template.yaml passes cfn-lint and wires what the workflow needs; buildspec-deploy.yml
runs the deploy command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import yaml

from conftest import ROOT

TEMPLATE = ROOT / "infra/template.yaml"


class CfnLoader(yaml.SafeLoader):
    pass


CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: {
    suffix: loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode)
    else loader.construct_sequence(node)})


def cfn_lint(path) -> subprocess.CompletedProcess:
    exe = shutil.which("cfn-lint") or os.path.join(os.path.dirname(sys.executable), "cfn-lint")
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300)


def test_template_passes_cfn_lint_and_a_broken_one_does_not(tmp_path):
    proc = cfn_lint(TEMPLATE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("BlockPublicAcls: true",
                                                   "BlockPublicAclz: true"))
    assert cfn_lint(broken).returncode != 0


def test_template_wires_the_workflow():
    doc = yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)
    res = doc["Resources"]
    bucket = res["ArtifactBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert res["ModelPackageGroup"]["Type"] == "AWS::SageMaker::ModelPackageGroup"
    assert res["BuildProject"]["Properties"]["Source"]["BuildSpec"] == "buildspec.yml"
    assert res["BuildProject"]["Properties"]["Triggers"]["Webhook"] is True
    assert res["DeployProject"]["Properties"]["Source"]["BuildSpec"] == "buildspec-deploy.yml"
    rule = res["ApprovalRule"]["Properties"]
    assert rule["EventPattern"]["detail-type"] == ["SageMaker Model Package State Change"]
    assert rule["EventPattern"]["detail"]["ModelApprovalStatus"] == ["Approved"]
    assert rule["EventPattern"]["detail"]["ModelPackageGroupName"] == [
        {"Ref": "ModelPackageGroupName"}]
    assert rule["Targets"][0]["Arn"] == {"GetAtt": "DeployProject.Arn"}
    assumed = res["SageMakerExecutionRole"]["Properties"]["AssumeRolePolicyDocument"]
    assert assumed["Statement"][0]["Principal"]["Service"] == "sagemaker.amazonaws.com"
    statements = res["SageMakerExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"][
        "Statement"]
    assert not any(s["Action"] == "*" or s["Action"] == ["*"] for s in statements)


def test_deploy_buildspec_runs_staging_then_optionally_prod(tmp_path):
    from pipelines.deploy import cli as deploy

    doc = yaml.safe_load((ROOT / "buildspec-deploy.yml").read_text())
    (script,) = doc["phases"]["build"]["commands"]
    env = {"PATH": "/usr/bin:/bin", **{k: str(v) for k, v in doc["env"]["variables"].items()},
           "DOGBREED_BUCKET": "b", "PROMOTE_TO_PROD": "true"}
    probe = script.replace(".venv/bin/python -m pipelines.deploy", "echo")
    lines = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True,
                           check=True, cwd=tmp_path).stdout.strip().splitlines()
    assert len(lines) == 2
    parser_args = [line.split() for line in lines]
    assert parser_args[0][-2:] == ["--stage", "staging"]
    assert parser_args[1][-2:] == ["--stage", "prod"]
    assert "--local" not in lines[0] and "--bucket b" in lines[0]
    assert callable(deploy.deploy_sagemaker)
