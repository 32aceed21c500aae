import pytest

from hf_robust import demo


@pytest.mark.real
def test_demo_runs_every_section(capsys):
    assert demo.run_demo() == 0
    printed = capsys.readouterr().out
    for title, _ in demo.SECTIONS:
        assert f"== {title} ==" in printed
    # The real models really answered: MiniLM ranks the bread passage first, SmolLM2 knows the capital.
    assert "Paris" in printed
    ranking = printed.split("three passages")[1].splitlines()
    assert "flour" in ranking[1]
    # GASLITE: the appeared@10 line is printed with both figures.
    assert "held-out appeared@10: 0% (the info text alone)" in printed
