"""Credentials in camera and webhook URLs are masked wherever a source is printed."""

import pytest

from avarnet.redact import MASK, redact, redact_secrets


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/h264", f"rtsp://admin:{MASK}@10.0.0.5:554/h264"),
        ("rtsp://admin:p@ss:w0rd@cam/x", f"rtsp://admin:{MASK}@cam/x"),
        ("cannot open rtsp://u:pw@cam/1: refused", f"cannot open rtsp://u:{MASK}@cam/1: refused"),
        ("https://h/x?token=abc&n=1", f"https://h/x?token={MASK}&n=1"),
        ("http://h/hook?API_KEY=zz#f", f"http://h/hook?API_KEY={MASK}#f"),
        ("rtsp://cam.local/stream", "rtsp://cam.local/stream"),
        ("/videos/yard.mp4", "/videos/yard.mp4"),
    ],
)
def test_redact_masks_passwords_and_secret_parameters(raw, expected):
    assert redact(raw) == expected


def test_redact_secrets_masks_a_configured_secret_repeated_outside_a_url():
    line = "login refused for user cam with password hunter22"
    assert "hunter22" not in redact_secrets(line, ["hunter22"])


def test_redact_endpoint_hides_a_webhooks_path_and_credentials():
    from avarnet.redact import redact_endpoint

    url = "https://u:pw@hooks.example.com:8443/services/T0/B0/XYZSECRET?token=t"
    assert redact_endpoint(url) == f"https://{MASK}@hooks.example.com:8443/..."
    assert redact_endpoint("http://h:9") == "http://h:9"
