"""tools/benchmark.py: how rows are run side by side and how their speeds are compared (no
timing is asserted: speed is measured by the tool, not in tests)."""
import pytest

from helpers import load_tool

benchmark = load_tool('benchmark.py')


def row(step_seconds, batch=8):
    """A row's result as :func:`run_rows` gives it, from its steps' seconds (one list per
    round)."""
    return benchmark._summary([dict(batch=batch, input_hw=[256, 256], compile_s=None,
                                    peak_gib=0.5, seconds=steps) for steps in step_seconds])


def test_summary_gives_the_median_step_and_each_rounds():
    result = row([[1.0, 4.0, 2.0], [0.5, 0.5, 8.0]])
    assert result['seconds_per_step'] == 1.5  # median of all six steps
    assert result['images_per_s'] == 8 / 1.5
    assert result['runs_images_per_s'] == [8 / 2.0, 8 / 0.5]
    assert result['compile_s'] is None and result['peak_gib'] == 0.5


def test_a_row_that_failed_in_any_round_is_its_error():
    ok = dict(batch=1, input_hw=[8, 8], compile_s=None, peak_gib=0., seconds=[1.0])
    assert benchmark._summary([ok, dict(error='OSError: no')]) == dict(error='OSError: no')


def test_ratio_pairs_the_steps_of_the_same_moment():
    # the machine slows down after two steps: step by step ours is 1.1-1.5x the reference,
    # 1.3x at the median, where the ratio of the two median steps would say 1.1x
    ours = row([[1.0, 1.0, 2.5, 2.5, 2.5]])
    reference = row([[1.2, 1.4, 2.75, 3.25, 3.75]])
    text = benchmark._ratio(ours, [reference], 'ratio_to_hf')
    assert reference['seconds_per_step'] / ours['seconds_per_step'] == pytest.approx(1.1)
    assert ours['ratio_to_hf']['median'] == pytest.approx(1.3)
    assert ours['ratio_to_hf']['quartiles'] == pytest.approx([1.2, 1.4])
    assert text == '1.30 [1.20-1.40]'


def test_ratio_is_against_the_faster_reference_with_each_rounds():
    ours = row([[1.0, 1.0], [2.0, 2.0]])
    slow = row([[3.0, 3.0], [6.0, 6.0]])
    fast = row([[1.5, 1.5], [2.0, 2.0]])
    text = benchmark._ratio(ours, [slow, fast], 'ratio_to_faster')
    assert ours['ratio_to_faster']['per_round'] == [1.5, 1.0]
    assert text.endswith('(rounds: 1.50, 1.00)')


def test_rows_run_side_by_side_and_a_failed_row_says_why(tmp_path):
    args = benchmark.parse_args(['--size', '32', '--batch', '1', '--window', '4',
                                 '--warmup', '1', '--threads', '1'])
    ours = ['--row', benchmark.OURS]
    results = benchmark.run_rows(args, [ours, ours + ['--dtype', 'fp64']], steps=2, rounds=1)
    assert len(results[0]['step_seconds'][0]) == 2 and results[0]['batch'] == 1
    assert results[0]['peak_gib'] >= 0
    assert 'invalid choice' in results[1]['error'] and 'fp64' in results[1]['error']


def test_deploy_suite_runs_every_runtime_on_the_same_input(tmp_path, capsys):
    """Each row (ours and HF eager, HF's export in ONNX Runtime and OpenVINO) runs and is
    timed; the export is cached for the next run."""
    args = benchmark.parse_args(['--suite', 'deploy', '--size', '64', '--batch', '1',
                                 '--window', '4', '--iters', '2', '--warmup', '1',
                                 '--threads', '1', '--onnx-dir', str(tmp_path)])
    rows = benchmark.deploy_suite(args)['rows']
    assert [r['model'] for r in rows] == [name for name, _, _ in benchmark.DEPLOY_ROWS]
    assert all('error' not in r and len(r['step_seconds'][0]) == 2 for r in rows), rows
    assert len(list(tmp_path.glob('hf_*.onnx'))) == 1
    assert 'OpenVINO, HF export' in capsys.readouterr().out
