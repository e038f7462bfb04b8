"""``broker.doctor.checks.domains`` (check 6): origins, and OpenAI's domain allowlist."""

from __future__ import annotations


def test_domains_listed_with_the_allowlist_reminder(doctor, doctor_env):
    env = doctor_env | {
        "BROKER_ALLOWED_ORIGINS": "https://app.example.com,http://localhost:5173,https://*.example.org"
    }
    r = doctor(env, json=True)
    domains = r.check("domains")
    assert domains["status"] == "warn"  # the wildcard matches nothing
    assert domains["data"]["origins"] == [
        {"origin": "https://app.example.com", "needs_allowlist": True},
        {"origin": "http://localhost:5173", "needs_allowlist": False},
        {"origin": "https://*.example.org", "needs_allowlist": True},
    ]
    text = " ".join(domains["details"])
    assert "app.example.com must be on OpenAI's domain allowlist" in text
    assert "http://localhost:5173: localhost, needs no allowlist entry" in text
    assert "security/domain-allowlist" in text

    r = doctor(doctor_env | {"BROKER_ALLOWED_ORIGINS": "https://app.example.com"})
    assert "1 public hostname to put on OpenAI's domain allowlist: app.example.com" in r.line(
        "✔ 6. Domains"
    )
