"""The smoke test's request and the checks of an answer, shared by local and SageMaker deploys.

The smoke test checks the serving path (decode, predict, encode), not the model's accuracy: one
small JPEG in, one well-formed prediction out.
"""

from __future__ import annotations

import base64
import json

# a 32x32 grey gradient, as JPEG: embedded so that deploying needs no imaging library
_SMOKE_JPEG_B64 = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERX"
    "RTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAgACADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAA"
    "AAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAk"
    "M2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKT"
    "lJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QA"
    "HwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdh"
    "cRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hp"
    "anN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk"
    "5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDj/sftR9j9q6D7H7UfY/agDn/sftR9j9q6D7H7UfY/agDoPsft"
    "R9j9q6D7H7UfY/agDn/sftR9j9q6D7H7UfY/agD/2Q==")


def smoke_image() -> bytes:
    """A small JPEG."""
    return base64.b64decode(_SMOKE_JPEG_B64)


def json_payload() -> bytes:
    """The image as the JSON body the model's input_fn accepts (moto's invoke_endpoint cannot
    carry a binary body)."""
    return json.dumps({"image": _SMOKE_JPEG_B64}).encode()


def problem_with(answer: str | bytes) -> str | None:
    """None if ``answer`` holds exactly one well-formed prediction, else what is wrong."""
    try:
        (prediction,) = json.loads(answer)["predictions"]
        assert prediction["label"] and 0 <= float(prediction["probability"]) <= 1
        assert isinstance(prediction.get("top_k", []), list)
    except Exception:  # noqa: BLE001 - any malformed answer is a failed smoke test
        text = answer.decode(errors="replace") if isinstance(answer, bytes) else answer
        return f"unexpected answer: {text[:200]}"
    return None
