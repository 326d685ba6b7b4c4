"""Parts the subcommands share."""

from mlflow_wattsup.cli.common import write_output


def test_write_output_to_a_file_says_where_else_to_stdout(tmp_path, capsys):
    write_output(None, "table\n")
    assert capsys.readouterr() == ("table\n", "")
    out = tmp_path / "t.md"
    write_output(str(out), "table\n", "report of 3 runs written")
    assert out.read_text() == "table\n"
    assert capsys.readouterr() == ("", f"wattsup: report of 3 runs written to {out}\n")
