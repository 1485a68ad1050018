"""Readers: real-format fixtures parse to the right records; every kind of bad
input is either a documented normalisation or an InputError naming file,
record and position."""
from __future__ import annotations

import gzip

import pytest

from protjax.data import readers
from protjax.errors import InputError


def _write(tmp_path, name, text, gz=False):
  p = tmp_path / name
  if gz:
    with gzip.open(p, "wt") as f:
      f.write(text)
  else:
    p.write_text(text)
  return str(p)


# --- FASTA ---------------------------------------------------------------------

def test_fasta_real_headers_multiline(fixtures_dir):
  recs = list(readers.read_fasta(fixtures_dir / "data" / "pretrain_small.fasta"))
  assert len(recs) == 12
  ids = [r[0] for r in recs]
  assert ids[0] == "sp|A0A385XJ53|INSA9_ECOLI"
  # `>ACC EC~~~name~~~` style header: id is the accession.
  assert any(i == "P11608" for i in ids)
  # Multi-line record joined: InsA9 is 60 + 31 residues.
  assert recs[0][1] == ("MASVSISCPSCSATDGVVRNGKSTAGHQRYLCSHCRKTWQLQFTYTASQPGTHQKIIDMA"
                        "MNGVGCRATARIMGVGLNTILRHLKNSGRSR")
  assert all(set(s) <= set(readers.RESIDUES) for _, s in recs)


def test_fasta_gz_by_magic_and_suffix(tmp_path):
  text = ">a desc\nMKT\nAYI\n>b\nQQ\n"
  plain = list(readers.read_fasta(_write(tmp_path, "x.fasta", text)))
  gz = list(readers.read_fasta(_write(tmp_path, "x.fasta.gz", text, gz=True)))
  # gzip data without the .gz suffix is still detected by its magic bytes.
  nosuffix = list(readers.read_fasta(_write(tmp_path, "y.fa", text, gz=True)))
  assert plain == gz == nosuffix == [("a", "MKTAYI"), ("b", "QQ")]


@pytest.mark.parametrize("damage,fragment", [
    (lambda g, text: g[:len(g) // 2], "gzip data is truncated"),
    (lambda g, text: g[:-8] + bytes(b ^ 0xFF for b in g[-8:-4]) + g[-4:], "CRC check failed"),
    (lambda g, text: text, "named .gz but is not gzip data")])
def test_damaged_gzip_names_the_file_wherever_read(tmp_path, damage, fragment):
  texts = {readers.read_fasta: "".join(f">r{i}\nMKTAYIAKQRQISFVKSHFSRQ\n" for i in range(3000)),
           readers.read_netsurfp_csv: "seq,dssp3\n" + "M K T A,C H H C\n" * 3000}
  for read, text in texts.items():
    path = tmp_path / f"{read.__name__}.gz"
    path.write_bytes(damage(gzip.compress(text.encode()), text.encode()))
    with pytest.raises(InputError, match=fragment) as e:
      list(read(path))
    assert e.value.path == str(path)


def test_fasta_non_utf8_bytes(tmp_path):
  path = tmp_path / "x.fa"
  path.write_bytes(b">a d\xe9sc\nMK\n>b\xff\nMK\n")
  it = readers.read_fasta_headers(path)
  assert next(it) == ("a", "a d\ufffdsc", "MK")  # the description: U+FFFD
  with pytest.raises(InputError, match="line 3: record id has byte 0xff"):
    next(it)
  path.write_bytes(b">a\nM\xffK\n")
  with pytest.raises(InputError, match="position 2: byte 0xff .not UTF-8 text. is not a residue"):
    list(readers.read_fasta(path))


def test_fasta_streams(tmp_path):
  # The first record is yielded before a later bad record is read.
  it = readers.read_fasta(_write(tmp_path, "x.fa", ">a\nMK\n>b\nM1K\n"))
  assert next(it) == ("a", "MK")
  with pytest.raises(InputError):
    next(it)


def test_fasta_lowercase_and_trailing_stop_normalised(tmp_path):
  recs = list(readers.read_fasta(_write(tmp_path, "x.fa", ">a\nmktay\ni*\n>b\nM K\tT \n")))
  assert recs == [("a", "MKTAYI"), ("b", "MKT")]  # spaces and tabs in sequence lines: ignored


@pytest.mark.parametrize("text,record,position,fragment", [
    (">a\nMK*T\n", "a", 3, "stop codon"),
    (">a\nMKT\n>b\nMK3T\n", "b", 3, "'3'"),
    (">a\nMKJ\n", "a", 3, "'J'"),
    (">a\nMK-T\n", "a", 3, "'-'"),
])
def test_fasta_bad_characters_name_position(tmp_path, text, record, position, fragment):
  path = _write(tmp_path, "bad.fa", text)
  with pytest.raises(InputError) as e:
    list(readers.read_fasta(path))
  assert e.value.path == path and e.value.record == record and e.value.position == position
  msg = str(e.value)
  assert path in msg and f"record {record!r}" in msg and f"position {position}" in msg
  assert fragment in msg


def test_fasta_missing_file(tmp_path):
  with pytest.raises(InputError, match="no such file"):
    list(readers.read_fasta(tmp_path / "nope.fasta"))


def test_fasta_empty_file(tmp_path):
  with pytest.raises(InputError, match="no FASTA records"):
    list(readers.read_fasta(_write(tmp_path, "empty.fa", "")))


def test_fasta_not_fasta(tmp_path):
  with pytest.raises(InputError, match="before the first '>'"):
    list(readers.read_fasta(_write(tmp_path, "x.fa", "MKT\n>a\nMK\n")))


def test_fasta_record_without_sequence(tmp_path):
  with pytest.raises(InputError) as e:
    list(readers.read_fasta(_write(tmp_path, "x.fa", ">a\nMK\n>empty one\n>c\nMK\n")))
  assert e.value.record == "empty" and "no sequence" in str(e.value)


def test_fasta_duplicate_ids(tmp_path):
  path = _write(tmp_path, "x.fa", ">a\nMK\n>b\nMK\n>a second\nMKT\n")
  with pytest.raises(InputError, match="duplicate") as e:
    list(readers.read_fasta(path))
  assert e.value.record == "a"
  # Switchable for corpora too large to keep every id in memory.
  assert len(list(readers.read_fasta(path, check_duplicates=False))) == 3


def test_fasta_long_sequence(tmp_path):
  long = "M" + "ACDEFGHIKLMNPQRSTVWY" * 2000  # 40,001 residues
  path = _write(tmp_path, "x.fa", ">long\n" + "\n".join(long[i:i + 60] for i in range(0, len(long), 60)))
  # Without max_length the reader passes it on (the crop/drop preprocessor decides)...
  [(rid, seq)] = list(readers.read_fasta(path))
  assert rid == "long" and seq == long
  # ...with max_length it is an error naming the record.
  with pytest.raises(InputError, match="40001 residues") as e:
    list(readers.read_fasta(path, max_length=40000))
  assert e.value.record == "long"


# --- NetSurfP CSV ----------------------------------------------------------------

def test_netsurfp_csv_stray_spaces(fixtures_dir):
  recs = list(readers.read_netsurfp_csv(fixtures_dir / "data" / "ts115_small.csv"))
  assert [r[0] for r in recs] == ["0", "1", "2"]
  for _, seq, labels in recs:
    assert set(labels) == {"dssp3", "dssp8", "disorder", "cb513_mask"}
    for v in labels.values():
      assert len(v) == len(seq)
    assert set(labels["dssp3"]) <= set("HEC")
    assert set(labels["dssp8"]) <= set("GHIBESTC")
    assert set(labels["disorder"]) <= {0, 1} and isinstance(labels["disorder"][0], int)
  # Values checked against the raw file: first row, first residue.
  raw = (fixtures_dir / "data" / "ts115_small.csv").read_text().splitlines()[1]
  seq0, d3, d8, dis, mask = raw.split(",")
  assert recs[0][1] == seq0.replace(" ", "")
  assert recs[0][2]["dssp8"] == d8.split()
  assert recs[0][2]["disorder"] == [int(float(x)) for x in dis.split()]


def test_netsurfp_csv_gz_seq_column(fixtures_dir):
  recs = list(readers.read_netsurfp_csv(fixtures_dir / "data" / "netsurfp_small.csv.gz"))
  assert len(recs) == 2 and recs[0][1].startswith("GDEEKRNRAITARRQHLKSVMLQIAATELEKEEG")
  assert len(recs[0][2]["dssp3"]) == len(recs[0][1])


def test_netsurfp_csv_id_column(tmp_path):
  path = _write(tmp_path, "x.csv", "id, input, dssp3\nP1,M K T,C H H\nP2,A A,E E\n")
  assert list(readers.read_netsurfp_csv(path)) == [
      ("P1", "MKT", {"dssp3": ["C", "H", "H"]}), ("P2", "AA", {"dssp3": ["E", "E"]})]


@pytest.mark.parametrize("body,fragment,position", [
    ("M K T,C H\n", "2 labels for 3 residues", None),
    ("M K T,C X H\n", "dssp3 label 'X'", 2),
    ("M 7 T,C H H\n", "'7'", 2),
])
def test_netsurfp_csv_bad_rows(tmp_path, body, fragment, position):
  path = _write(tmp_path, "x.csv", "seq, dssp3\nA A,C C\n" + body)
  with pytest.raises(InputError) as e:
    list(readers.read_netsurfp_csv(path))
  assert fragment in str(e.value) and e.value.record == "1" and e.value.position == position


def test_netsurfp_csv_no_seq_column(tmp_path):
  with pytest.raises(InputError, match="no 'seq' or 'input'"):
    list(readers.read_netsurfp_csv(_write(tmp_path, "x.csv", "foo,dssp3\nA,C\n")))


# --- DeepLoc -------------------------------------------------------------------

def test_deeploc_val_headers(fixtures_dir):
  recs = {r[0]: r for r in readers.read_deeploc_fasta(fixtures_dir / "data" / "deeploc_val_small.fasta")}
  assert len(recs) == 5
  labels = sorted((loc, mem) for _, _, loc, mem in recs.values())
  assert labels == [("Cell.membrane", "M"), ("Cytoplasm", "S"), ("Cytoplasm-Nucleus", "U"),
                    ("Lysosome/Vacuole", "M"), ("Nucleus", "U")]


def test_deeploc_train_with_labels_csv(fixtures_dir):
  d = fixtures_dir / "data"
  recs = list(readers.read_deeploc_fasta(d / "deeploc_train_small.fasta"))
  labels = readers.read_deeploc_labels_csv(d / "deeploc_train_small_labels.csv")
  assert [r[0] for r in recs] == list(labels)
  assert all(r[2] is None and r[3] is None for r in recs)
  assert set(labels.values()) <= set(readers.DEEPLOC_LOCATIONS)


def test_parse_deeploc_header():
  assert readers.parse_deeploc_header("Q1 Nucleus-S") == ("Q1", "Nucleus", "S")
  assert readers.parse_deeploc_header("Q1 Nucleus") == ("Q1", "Nucleus", None)
  assert readers.parse_deeploc_header("Q1") == ("Q1", None, None)


def test_deeploc_labels_csv_errors(tmp_path):
  with pytest.raises(InputError, match="'Label' and 'Class'"):
    readers.read_deeploc_labels_csv(_write(tmp_path, "a.csv", "id,loc\nx,Nucleus\n"))
  with pytest.raises(InputError, match="duplicate") as e:
    readers.read_deeploc_labels_csv(_write(tmp_path, "b.csv", "Label,Class\nx,Nucleus\nx,Plastid\n"))
  assert e.value.record == "x"
