"""Files kmem writes (Save, ``%gpumem export``): whole or not at all, never over anything, never
through a symbolic link, next to the notebook. Real files, real links, a real size limit."""

import os

import pytest
from IPython.core.error import UsageError

from kmem_magic.measure import Measurement
from kmem_magic.show.export import write_new
from kmem_magic.show.panel import Actions


def run(ip, source):
    return ip.run_cell(source, store_history=True)


def test_a_write_that_fails_leaves_nothing_and_the_retry_works(fresh, tmp_path):
    target = tmp_path / "cells.json"
    result = fresh(f"""
        import resource
        ip.run_line_magic("load_ext", "kmem_magic")
        for i in range(30):
            cell("%%gpumem --quiet\\nx = list(range(1000))")
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # smaller than the export
        failed = cell("%gpumem export {target}")
        RESULT["error"] = repr(failed.error_in_exec)
        RESULT["after_failure"] = sorted(os.listdir("{tmp_path}"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        RESULT["retry"] = repr(cell("%gpumem export {target}").error_in_exec)
    """)
    assert "UsageError" in result["error"] and "File too large" in result["error"]
    assert result["after_failure"] == [], "no truncated file, no temporary left behind"
    assert result["retry"] == "None"
    assert target.read_text().startswith("[") and target.read_text().rstrip().endswith("]")


def test_written_files_get_the_usual_permissions(tmp_path):
    write_new(str(tmp_path / "a.csv"), "x\n")
    mode = (tmp_path / "a.csv").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_save_skips_a_dangling_link_and_never_writes_through_it(tmp_path):
    record = Measurement(deadline_s=None).start().finish()
    outside = tmp_path / "outside.png"
    (tmp_path / f"kmem-{record.name}.png").symlink_to(outside)
    status = Actions(dict, folder=str(tmp_path)).save(record)
    assert status.startswith(f"Saved kmem-{record.name}-1.png")
    assert not outside.exists(), "nothing written through the link"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_save_keeps_png_and_csv_together(tmp_path):
    record = Measurement(deadline_s=None).start().finish()
    (tmp_path / f"kmem-{record.name}.csv").write_text("someone else's")
    Actions(dict, folder=str(tmp_path)).save(record)
    names = sorted(os.listdir(tmp_path))
    assert names == [f"kmem-{record.name}-1.csv", f"kmem-{record.name}-1.png",
                     f"kmem-{record.name}.csv"]
    assert (tmp_path / f"kmem-{record.name}.csv").read_text() == "someone else's"


def test_export_takes_a_quoted_path_with_spaces_and_expands_the_home(ip, tmp_path,
                                                                     monkeypatch):
    run(ip, "%%gpumem --quiet\nx = 1")
    result = run(ip, f'%gpumem export "{tmp_path / "my cells.csv"}"')
    assert result.error_in_exec is None and (tmp_path / "my cells.csv").exists()
    monkeypatch.setenv("HOME", str(tmp_path))
    result = run(ip, "%gpumem export ~/home.json")
    assert result.error_in_exec is None and (tmp_path / "home.json").exists()


def test_export_into_proc_is_a_one_line_usage_error(ip):
    run(ip, "%%gpumem --quiet\nx = 1")
    result = run(ip, "%gpumem export /proc/kmem-cells.csv")
    assert isinstance(result.error_in_exec, UsageError)
    assert str(result.error_in_exec).startswith("%gpumem export: cannot write")


@pytest.mark.notebook
def test_save_after_cd_writes_next_to_the_notebook(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in [
        "%load_ext kmem_magic", f"%cd {elsewhere}", "%%gpumem\nx = 1",
        # what the Save button's message runs in the kernel
        "kmem = get_ipython().magics_manager.registry['GpuMem']\n"
        "panel = list(kmem.panels.values())[-1]\n"
        "panel._on_msg(panel.widget, {'action': 'save'}, [])\nprint(panel.widget.status)"]]
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    status = nb.cells[-1].outputs[0].text
    assert status.startswith("Saved kmem-cell-3.png") and str(tmp_path) in status
    assert (tmp_path / "kmem-cell-3.png").exists() and (tmp_path / "kmem-cell-3.csv").exists()
    assert not os.listdir(elsewhere)


def test_a_filesystem_without_hard_links_still_gets_whole_exclusive_files(tmp_path, monkeypatch):
    import errno

    def no_links(source, target):
        raise OSError(errno.ENOSYS, "Function not implemented")  # a FUSE mount

    monkeypatch.setattr(os, "link", no_links)
    write_new(str(tmp_path / "a.csv"), "x\n")
    assert (tmp_path / "a.csv").read_text() == "x\n"
    with pytest.raises(FileExistsError):
        write_new(str(tmp_path / "a.csv"), "y\n")
    assert sorted(os.listdir(tmp_path)) == ["a.csv"], "no temporary file left"
