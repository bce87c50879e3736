"""The shell's static assets: badge colours meet WCAG AA, and every shell template compiles."""

import re
from pathlib import Path

import pytest
from django.template.loader import get_template

ROOT = Path(__file__).resolve().parents[3]
CSS = (ROOT / "static" / "portal" / "portal.css").read_text()


def luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def colour_pair(selector: str) -> tuple[str, str]:
    rule = re.search(re.escape(selector) + r"\s*\{([^}]*)\}", CSS)
    assert rule, f"{selector} missing from portal.css"
    body = rule.group(1)
    fg = re.search(r"(?<!-)color:\s*(#[0-9a-fA-F]{6})", body).group(1)
    bg = re.search(r"background:\s*(#[0-9a-fA-F]{6})", body).group(1)
    return fg, bg


def test_contrast_formula_matches_the_wcag_reference_values():
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


@pytest.mark.parametrize(
    "selector",
    [".df-badge-ok", ".df-badge-info", ".df-badge-warn", ".df-badge-bad", ".df-badge-muted"]
    + [".df-banner-critical", ".df-banner-warning"],
)
def test_status_colours_meet_wcag_aa(selector):
    fg, bg = colour_pair(selector)
    assert contrast(fg, bg) >= 4.5, f"{selector}: {fg} on {bg} is {contrast(fg, bg):.2f}:1"


def test_every_status_the_admin_maps_has_a_badge_class():
    from dataflare_portal.core.admin_base import BADGE_CLASSES

    for css in set(BADGE_CLASSES.values()):
        assert f".df-badge-{css} " in CSS or f".df-badge-{css}{{" in CSS


@pytest.mark.parametrize(
    "name",
    [
        "admin/base_site.html",
        "admin/index.html",
        "portal/page.html",
        "portal/panel_base.html",
        "portal/_panel.html",
        "portal/_panel_error.html",
        "portal/_kpi.html",
        "portal/_progress.html",
        "portal/_empty.html",
        "portal/_banner.html",
        "portal/_nav.html",
        "portal/_language_switcher.html",
    ],
)
def test_shell_templates_compile(name):
    get_template(name)


def test_the_progress_bar_renders_an_accessible_bar():
    html = get_template("portal/_progress.html").render({"value": 42.4, "label": "filter", "status": "ok"})
    assert 'role="progressbar"' in html and 'aria-valuenow="42"' in html
    assert "width: 42%" in html and "filter 42%" in html
    assert "df-progress-ok" in html


def test_grouped_numbers_look_the_same_in_every_language():
    from django.utils import translation

    from dataflare_portal.core.templatetags.portal import grouped

    for language in ("en", "zh-hans"):
        with translation.override(language):
            assert [grouped(v) for v in (3216200, 3499.95, 0, 247.5, 100.0)] == [
                "3,216,200",
                "3,499.95",
                "0",
                "247.5",
                "100",
            ]
    assert [grouped(v) for v in ("—", None, True)] == ["—", None, True]
