"""The README's Python examples run as written (only the Hub's HTTP calls are patched)."""

import re
from pathlib import Path
from unittest import mock

from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl

from hf_robust import robustness_results_from_card

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    uploads = []

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        uploads.append((repo_id, sorted(path.name for path in Path(folder_path).iterdir())))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="",
                          commit_description="", oid="0")

    namespace = {}
    with (
        mock.patch.object(HfApi, "create_repo", side_effect=lambda repo_id, **kwargs: RepoUrl(f"https://huggingface.co/{repo_id}")),
        mock.patch.object(HfApi, "upload_folder", upload_folder),
    ):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)

    assert uploads and uploads[0][0] == "your-name/tiny-llama-robust"
    assert "README.md" in uploads[0][1] and "model.safetensors" in uploads[0][1]
    card = ModelCard((tmp_path / "tiny-llama-robust" / "README.md").read_text())
    assert robustness_results_from_card(card) == namespace["results"]
