"""The few calls of MLflow's REST API that export.mlflow makes, over httpx (a core dependency:
no MLflow client package, so nothing extra to install and no pins to reconcile).

Credentials come from the worker's environment only, as MLflow's own client reads them:
``MLFLOW_TRACKING_TOKEN`` (a bearer token) or ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` (basic auth). They are sent as headers, never logged, and blanked
out of every error message (a server could echo them).

Artifacts go through the tracking server (``mlflow server --serve-artifacts``, the default
since MLflow 2): the run's artifact URI must be ``mlflow-artifacts:``; a server that hands out
its store's own URIs (s3://, file:) would need the store's credentials here, and is refused
with that explanation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from app.engine.errors import AddressRefused, ExportRejected, ExportUnreachable
from app.engine.export.addresses import RefusedAddress, check_url

SETTING = "LATHE_EXPORT_ALLOW_PRIVATE"
TIMEOUT_S = 30.0
UPLOAD_TIMEOUT_S = 600.0
SECRET_VARIABLES = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"


def check_destination(uri: str, allow_private: bool) -> None:
    try:
        check_url(uri, allow_private, credentials_advice="set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/"
                  "PASSWORD in the worker's environment", purpose="exports", setting=SETTING)
    except RefusedAddress as exc:
        raise AddressRefused(f"tracking_uri refused: {exc}.") from None


class Mlflow:
    """One tracking server. ``call`` raises ExportUnreachable / ExportRejected, never httpx's
    errors, and no message it raises holds a credential."""

    def __init__(self, tracking_uri: str, allow_private: bool) -> None:
        self.base = tracking_uri.rstrip("/")
        self.allow_private = allow_private
        self.secrets = [v for v in (os.environ.get(n) for n in SECRET_VARIABLES) if v]
        headers, auth = {"User-Agent": "lathe"}, None
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            auth = httpx.BasicAuth(user, password)
        # No redirects: the address policy was checked for this host, not for wherever it points.
        self.http = httpx.Client(base_url=self.base, headers=headers, auth=auth, timeout=TIMEOUT_S,
                                 follow_redirects=False, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def redacted(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def call(self, method: str, path: str, *, json: Any = None, params: Any = None, content: Any = None,
             timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """One request (the address policy checked again right before it: a name can be
        re-pointed); the JSON answer, or {} for an empty one."""
        check_destination(self.base, self.allow_private)
        what = f"MLflow at {self.base} ({method} {path})"
        try:
            response = self.http.request(method, path, json=json, params=params, content=content, timeout=timeout)
        except httpx.TimeoutException:
            raise ExportUnreachable(f"{what} did not answer within {timeout:g} s.") from None
        except httpx.HTTPError as exc:
            reason = self.redacted(" ".join(str(exc).split()) or type(exc).__name__)[:300]
            raise ExportUnreachable(f"{what} could not be reached: {reason}. Check tracking_uri and that the "
                                    "server is up and reachable from the workers.") from None
        if response.is_redirect:
            raise ExportRejected(f"{what} answered {response.status_code}, a redirect to "
                                 f"{self.redacted(response.headers.get('location', '?'))[:300]}; give the "
                                 "tracking server's own URL as tracking_uri (redirects are not followed).")
        if response.status_code >= 500:
            raise ExportUnreachable(f"{what} answered {response.status_code}: {self._reason(response)}. "
                                    "The server failed; try again later.")
        if response.status_code >= 400:
            code, message = self._error(response)
            advice = {401: " The worker's MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD is missing "
                           "or refused.",
                      403: " The worker's MLflow credentials lack the permission.",
                      404: " Is tracking_uri the root of an MLflow tracking server (of version 2 or later)?"}
            raise ExportRejected(f"{what} refused the request: {response.status_code}"
                                 f"{' ' + code if code else ''}: {message}.{advice.get(response.status_code, '')}",
                                 error_code=code)
        if not response.content:
            return {}
        try:
            answer = response.json()
        except ValueError:
            raise ExportRejected(f"{what} answered {response.status_code} with something that is not JSON; is "
                                 "tracking_uri an MLflow tracking server?") from None
        if not isinstance(answer, dict):
            raise ExportRejected(f"{what} answered with unexpected JSON; is tracking_uri an MLflow tracking server?")
        return answer

    def _error(self, response: httpx.Response) -> tuple[str | None, str]:
        try:
            body = response.json()
        except ValueError:
            return None, self._reason(response)
        if isinstance(body, dict):
            code = body.get("error_code") if isinstance(body.get("error_code"), str) else None
            return code, self.redacted(str(body.get("message") or response.reason_phrase))[:300]
        return None, self._reason(response)

    def _reason(self, response: httpx.Response) -> str:
        text = " ".join(response.text.split())[:300] if "json" in response.headers.get("content-type", "") \
            or "text/plain" in response.headers.get("content-type", "") else ""
        return self.redacted(text or response.reason_phrase or "no reason given")

    # --- the calls ----------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created when it does not exist yet (a concurrent creation wins)."""
        for attempt in range(2):
            try:
                found = self.call("GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})
                return str(found["experiment"]["experiment_id"])
            except ExportRejected as exc:
                if exc.error_code != DOES_NOT_EXIST or attempt:
                    raise
            try:
                return str(self.call("POST", "/api/2.0/mlflow/experiments/create", json={"name": name})["experiment_id"])
            except ExportRejected as exc:
                if exc.error_code != ALREADY_EXISTS:
                    raise
        raise AssertionError("unreachable")

    def upload(self, artifact_uri: str, relative: str, path: Path) -> None:
        """PUT one file under the run's artifact root, through the server's artifact proxy."""
        parts = urlsplit(artifact_uri)
        if parts.scheme != "mlflow-artifacts":
            raise ExportRejected(
                f"MLflow at {self.base} stores this run's artifacts at a {parts.scheme or 'local'}: URI, which only "
                "its own store's credentials can write; start the server with --serve-artifacts (the default since "
                "MLflow 2) so that artifacts go through it.")
        target = f"{parts.path.strip('/')}/{relative}"
        with path.open("rb") as f:
            self.call("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{quote(target)}", content=f,
                      timeout=UPLOAD_TIMEOUT_S)

    def model_version(self, name: str, source: str, run_id: str, tags: list[dict[str, str]]) -> dict[str, Any]:
        try:
            self.call("POST", "/api/2.0/mlflow/registered-models/create", json={"name": name})
        except ExportRejected as exc:
            if exc.error_code != ALREADY_EXISTS:
                raise
        answer = self.call("POST", "/api/2.0/mlflow/model-versions/create",
                           json={"name": name, "source": source, "run_id": run_id, "tags": tags})
        return answer["model_version"]
