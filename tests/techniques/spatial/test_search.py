import pytest
import torch

from sparsify_cnn.errors import InputError
from sparsify_cnn.evaluate import predict
from sparsify_cnn.techniques.spatial.evaluator import Box, Evaluator
from sparsify_cnn.techniques.spatial.job import search_sample
from sparsify_cnn.techniques.spatial.op import tile
from sparsify_cnn.techniques.spatial.rewrite import SpatialConfig, insert_spatial_ops
from sparsify_cnn.techniques.spatial.search import MODES, SearchConfig, SpatialSearch
from sparsify_cnn.transform.capture import capture


def _evaluator(model, shape, split, images=None, spatial=SpatialConfig()):
    gm = insert_spatial_ops(capture(model, (1, *shape)).graph_module, spatial).graph_module
    x, y = (split.x, split.y) if images is None else (split.x[:images], split.y[:images])
    return Evaluator(gm, x, y)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_meets_epsilon_on_lenet(mode, trained_lenet, digits28):
    ev = _evaluator(trained_lenet, (1, 28, 28), digits28.calib)
    config = SearchConfig(mode=mode, epsilon=0.01, granularity=4, top_m=3)
    result = SpatialSearch(ev, config).run()
    assert result.dense_accuracy - result.accuracy <= 0.01 + 1e-9
    assert result.macs_saved > 0.15 * 1_888_000  # of the two convs' MACs: prediction pays off
    assert set(result.masks) <= {"conv1", "conv2"}
    installed = {name: op.mask for name, op in ev.ops.items()}  # the plan's masks are left installed
    assert all(torch.equal(mask, result.masks.get(name, torch.ones_like(mask))) for name, mask in installed.items())
    final = ev.evaluate_network(result.masks)  # the verification is the whole network's
    assert (final.accuracy, final.macs_saved) == (result.accuracy, result.macs_saved)
    assert 0 < result.work_ratio < 1  # cheaper than the seed's options x full passes


@pytest.mark.parametrize("mode, granularity", [(m, 8) for m in MODES])
def test_every_mode_meets_a_relative_epsilon_on_cq(mode, granularity, trained_cq, digits32):
    ev = _evaluator(trained_cq, (3, 32, 32), digits32.calib, images=150)
    config = SearchConfig(mode=mode, epsilon=0.02, epsilon_kind="relative", granularity=granularity, top_m=2)
    result = SpatialSearch(ev, config).run()
    assert (result.dense_accuracy - result.accuracy) / result.dense_accuracy <= 0.02 + 1e-9
    assert result.macs_saved > 0


def test_a_cache_budget_changes_the_passes_not_the_plan(trained_lenet, digits28):
    """conv1's maps on 120 images take 5.5 MB, conv2's 1.5 MB: 6 MB keeps one layer at a time."""
    config = SearchConfig(mode="uniform_patch", epsilon=0.01, top_m=2, ones_range=(1, 1))
    gm = insert_spatial_ops(capture(trained_lenet, (1, 1, 28, 28)).graph_module).graph_module
    x, y = digits28.calib.x[:120], digits28.calib.y[:120]
    whole = SpatialSearch(Evaluator(gm, x, y), config).run()
    split = SpatialSearch(Evaluator(gm, x, y, max_cache_bytes=6_000_000), config).run()
    assert whole.masks.keys() == split.masks.keys() and whole.masks
    assert all(torch.equal(whole.masks[name], split.masks[name]) for name in whole.masks)
    assert (whole.accuracy, whole.macs_saved, whole.points) == (split.accuracy, split.macs_saved, split.points)
    assert whole.cache["groups"] == 1 and split.cache == {"peak_bytes": 120 * 20 * 24 * 24 * 4, "groups": 2,
                                                          "recording_passes": 2}  # fmt: skip
    assert split.work == pytest.approx(whole.work + 1)  # the second group's pass, counted whole


def test_a_sample_scores_layer_options_and_every_image_keeps_epsilon(trained_lenet, digits28):
    """Layer options on 40 images, whole networks on all 359: every network state the search
    scored, and its plan, are counts over the 359 (k / 359, which no k / 40 is but 0 and 1)."""
    gm = insert_spatial_ops(capture(trained_lenet, (1, 1, 28, 28)).graph_module).graph_module
    x, y = digits28.calib.x, digits28.calib.y
    sample = search_sample(len(x), 40)
    network = Evaluator(gm, x, y, layers=False)
    assert network.layers == {} and network.cache.peak_bytes == 0  # nothing kept for layers
    ev = Evaluator(gm, x[sample], y[sample])
    config = SearchConfig(mode="uniform_filter", epsilon=0.01, top_m=2, search_images=40)
    result = SpatialSearch(ev, config, network=network).run()
    assert result.search_images == 40 and result.dense_accuracy == network.dense_accuracy
    assert result.dense_accuracy - result.accuracy <= 0.01 + 1e-9 and result.macs_saved > 0
    assert result.points and all(abs(p.accuracy * 359 - round(p.accuracy * 359)) < 1e-9 for p in result.points)
    final = network.evaluate_network(result.masks)
    assert (final.accuracy, final.macs_saved) == (result.accuracy, result.macs_saved)
    exact = SpatialSearch(Evaluator(gm, x, y), config).run()
    assert result.work < exact.work  # passes over the 359 images, the sample's and the whole networks'

    # Given the dense predictions the job made, the whole-image evaluator does not run the dense model again.
    calls = []
    hook = gm.register_forward_hook(lambda *_: calls.append(1))
    given = Evaluator(gm, x, y, layers=False, dense_predictions=predict(trained_lenet, x))
    hook.remove()
    assert calls == [] and given.dense_accuracy == network.dense_accuracy
    again = SpatialSearch(Evaluator(gm, x[sample], y[sample]), config, network=given).run()
    assert (again.accuracy, again.macs_saved, again.points) == (result.accuracy, result.macs_saved, result.points)


class LinearHead(torch.nn.Module):
    """A Spatial op whose suffix is linear, into two classes: a margin moves exactly by its
    first-order change, so the estimated first level must equal the exact one."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("mode", ["uniform_filter", "max_granularity"])
def test_first_order_estimates_are_exact_where_the_suffix_is_linear(mode):
    torch.manual_seed(0)
    model = LinearHead().eval()
    x = torch.randn(60, 1, 8, 8)
    target = model(x).argmax(1) ^ (torch.arange(60) % 7 == 0)  # a few images wrong
    gm = insert_spatial_ops(capture(model, (1, 1, 8, 8)).graph_module).graph_module
    ev = Evaluator(gm, x, target)
    levels = {}
    for first_level in ("exact", "first_order"):
        config = SearchConfig(mode=mode, epsilon=0.05, granularity=2, top_m=20, first_level=first_level)
        search = SpatialSearch(ev, config)
        targets = {f"k{i}": cluster for i, cluster in enumerate(search._clusters(2, 2))} if mode == "uniform_filter" \
            else {f"c{ch}": Box(slice(ch, ch + 1)) for ch in range(4)}  # fmt: skip
        level = search._first_order_level if first_level == "first_order" else search._first_level
        levels[first_level] = level("conv", targets)
    assert levels["exact"].keys() == levels["first_order"].keys()
    for name, exact in levels["exact"].items():
        estimated = levels["first_order"][name]
        scores = [[value for o in options for value in (o.accuracy, o.saved)] for options in (estimated, exact)]
        assert exact and scores[0] == pytest.approx(scores[1])
        assert all(torch.equal(a.assignment, b.assignment) for a, b in zip(estimated, exact))
    assert any(o.accuracy < ev.dense_accuracy for options in levels["exact"].values() for o in options)  # some move


def test_an_options_risk_is_the_share_of_margins_it_uses_up_exactly_where_the_suffix_is_linear():
    torch.manual_seed(0)
    model = LinearHead().eval()
    x = torch.randn(60, 1, 8, 8)
    target = model(x).argmax(1) ^ (torch.arange(60) % 7 == 0)  # a few images wrong: they carry no risk
    gm = insert_spatial_ops(capture(model, (1, 1, 8, 8)).graph_module).graph_module
    ev = Evaluator(gm, x, target)
    search = SpatialSearch(ev, SearchConfig(mode="uniform_filter", epsilon=0.5, granularity=2, top_m=3))
    options = search._with_risk("conv", search._layer_options("conv"))
    assert len(options) == 3
    dense = ev.dense_margins()
    for option in options:
        changed = ev.evaluate_network({"conv": search._mask(option.assignment)})
        with torch.no_grad():
            logits = gm(x)
        margins = logits.gather(1, target[:, None]) - logits.gather(1, 1 - target[:, None])
        used = ((dense - margins.flatten()) / dense).clamp(0, 1)
        assert option.risk == pytest.approx(float(used[dense > 0].sum()) / 60, abs=1e-6)
        assert (option.accuracy, option.saved) == pytest.approx((changed.accuracy, changed.macs_saved))
    assert len({round(o.risk, 6) for o in options}) == 3 and all(o.risk > 0 for o in options)


@pytest.mark.parametrize("first_level", ["exact", "first_order"])
def test_a_risk_budget_keeps_only_options_that_use_up_little_margin(first_level):
    """Where the suffix is linear the two first levels keep the same options under the budget;
    without it, bolder ones (risk 0.47 here) come first."""
    torch.manual_seed(0)
    model = LinearHead().eval()
    x = torch.randn(60, 1, 8, 8)
    target = model(x).argmax(1) ^ (torch.arange(60) % 7 == 0)
    gm = insert_spatial_ops(capture(model, (1, 1, 8, 8)).graph_module).graph_module
    ev = Evaluator(gm, x, target)
    kept = {}
    for max_risk in (None, 0.05):
        config = SearchConfig(mode="uniform_filter", epsilon=0.2, granularity=2, top_m=3, first_level=first_level,
                              max_risk=max_risk)  # fmt: skip
        search = SpatialSearch(ev, config)
        kept[max_risk] = search._with_risk("conv", search._layer_options("conv"))
    assert kept[0.05] and all(o.risk <= 0.05 for o in kept[0.05])
    assert max(o.risk for o in kept[None]) > 0.4 and max(o.saved for o in kept[None]) > 4 * max(o.saved for o in kept[0.05])
    assert [round(o.saved) for o in kept[0.05]] == [147, 54]  # the same for both first levels
    with pytest.raises(InputError, match=r"max risk must be in \(0, 1\]"):
        SearchConfig(max_risk=0.0)


def test_the_back_off_steps_the_riskiest_of_options_with_the_same_accuracy_to_a_milder_one(trained_lenet, digits28):
    """On a sample no option changes an image of, risk orders the back-off: the layer whose
    option uses up most margin moves to its next option with less risk before any is dropped."""
    from sparsify_cnn.techniques.spatial.search import _Option

    search = SpatialSearch(_evaluator(trained_lenet, (1, 28, 28), digits28.calib, images=40), SearchConfig())
    dense = search.ev.dense_accuracy
    options = {"a": [_Option(None, dense, 30.0, 0.20), _Option(None, dense, 20.0, 0.30), _Option(None, dense, 10.0, 0.05)],
               "b": [_Option(None, dense, 25.0, 0.10), _Option(None, dense, 5.0, 0.01)]}  # fmt: skip
    states = search._back_off_states(options, list(options))
    assert states == [{"a": 0, "b": 0}, {"a": 2, "b": 0}, {"a": 2, "b": 1}, {"b": 1}, {}]


def test_the_back_off_sheds_the_most_network_risk_per_mac_counting_layers_that_share_images_together(
    trained_lenet, digits28
):
    """Layers a and b each use up 0.6 of one image's margin, c 0.5 of another's; each saves the
    same. On their own a and b are the riskiest, but together they can flip their image only
    once: dropping either takes 0.4 off the network's risk, dropping c 0.5. So c goes first."""
    from sparsify_cnn.techniques.spatial.search import _Option

    search = SpatialSearch(_evaluator(trained_lenet, (1, 28, 28), digits28.calib, images=40), SearchConfig())
    dense, margins = search.ev.dense_accuracy, search.ev.dense_margins()
    first, second = (margins > 0).nonzero().flatten()[:2].tolist()

    def option(image: int, share: float) -> _Option:
        moves = torch.zeros(len(margins))
        moves[image] = -share * margins[image]
        return _Option(None, dense, 10.0, share / 40, moves)

    options = {"a": [option(first, 0.6)], "b": [option(first, 0.6)], "c": [option(second, 0.5)]}
    assert search._risks([options["a"][0].moves + options["b"][0].moves]) == pytest.approx([1 / 40])
    states = search._back_off_states(options, list(options))
    assert states == [{"a": 0, "b": 0, "c": 0}, {"a": 0, "b": 0}, {"b": 0}, {}]
    for layer_options in options.values():  # without moves each layer counts on its own: a goes first
        layer_options[0].moves = None
    assert search._back_off_states(options, list(options))[1] == {"b": 0, "c": 0}


@pytest.mark.parametrize("mode", ["uniform_layer", "uniform_filter"])
def test_a_first_order_first_level_keeps_epsilon_with_fewer_network_runs(mode, trained_lenet, digits28):
    exact = SpatialSearch(_evaluator(trained_lenet, (1, 28, 28), digits28.calib),
                          SearchConfig(mode=mode, epsilon=0.01, top_m=3)).run()  # fmt: skip
    ev = _evaluator(trained_lenet, (1, 28, 28), digits28.calib)
    estimated = SpatialSearch(ev, SearchConfig(mode=mode, epsilon=0.01, top_m=3, first_level="first_order")).run()
    assert estimated.dense_accuracy - estimated.accuracy <= 0.01 + 1e-9
    assert estimated.macs_saved > 0.9 * exact.macs_saved  # here: the same
    if mode == "uniform_layer":  # the kept options, scored again: the lazy exact level ran as many
        assert (estimated.candidates, estimated.suffix_images) == (exact.candidates, exact.suffix_images)
    else:  # 7 networks' suffixes against 37, 2,154 suffix images against 12,918
        assert estimated.candidates < exact.candidates / 3 and estimated.suffix_images < exact.suffix_images / 3
    final = ev.evaluate_network(estimated.masks)
    assert (final.accuracy, final.macs_saved) == (estimated.accuracy, estimated.macs_saved)


def test_search_sample_is_seeded_sorted_and_whole_when_not_smaller():
    sample = search_sample(100, 10)
    assert torch.equal(sample, search_sample(100, 10)) and len(set(sample.tolist())) == 10
    assert torch.equal(sample, sample.sort().values) and int(sample.max()) < 100
    assert not torch.equal(sample, search_sample(100, 10, seed=1))
    for size in (None, 100, 500):
        assert torch.equal(search_sample(100, size), torch.arange(100))


def test_lazy_first_level_keeps_what_a_full_evaluation_keeps(trained_lenet, digits28):
    ev = _evaluator(trained_lenet, (1, 28, 28), digits28.calib, images=120)
    search = SpatialSearch(ev, SearchConfig(mode="uniform_patch", epsilon=0.01, top_m=3))
    c, hb, wb = 50, 4, 4
    targets = {f"c{ch}": Box(slice(ch, ch + 1)) for ch in range(0, 50, 7)}
    lazy = search._first_level("conv2", targets)
    for name, slots in targets.items():  # brute force: every pattern on the channel, as a full mask
        region = torch.zeros(c, hb, wb, dtype=torch.bool)
        slots.of(region).fill_(True)
        full = []
        for j, pattern in enumerate(search.patterns):
            mask = torch.where(region.repeat_interleave(2, 1).repeat_interleave(2, 2), tile(pattern, c, 8, 8, 2), True)
            outcome = ev.evaluate_mask("conv2", mask)
            full.append(search._option(c, hb, wb, slots, j, outcome.accuracy, outcome.macs_saved))
        expected = search._ranked(full)
        assert len(lazy[name]) == len(expected)
        for got, want in zip(lazy[name], expected):
            assert (got.saved, got.accuracy) == pytest.approx((want.saved, want.accuracy))
            assert torch.equal(got.assignment, want.assignment)


def test_uniform_layer_exact_search_beats_or_ties_greedy(trained_lenet, digits28):
    results = {}
    for limit in (10_000, 0):  # 0 forces the greedy back-off
        ev = _evaluator(trained_lenet, (1, 28, 28), digits28.calib, images=200)
        config = SearchConfig(mode="uniform_layer", epsilon=0.005, exact_limit=limit)
        results[limit] = SpatialSearch(ev, config).run()
        assert results[limit].dense_accuracy - results[limit].accuracy <= 0.005 + 1e-9
    assert results[10_000].points[0].step.startswith("exact")
    assert results[0].points[0].step.startswith("layer level")
    assert results[10_000].macs_saved >= 0.9 * results[0].macs_saved


def _back_off_search(trained_lenet, digits28, layers: int, meets):
    """A search whose layer level runs on ``layers`` made-up layers (each with two options) and a
    made-up network that meets epsilon at the back-off states ``meets`` says; and the states."""
    from sparsify_cnn.techniques.spatial.evaluator import Outcome
    from sparsify_cnn.techniques.spatial.search import _Option

    calls = []
    progress = lambda phase, item, done, total, **extra: calls.append((done, extra))  # noqa: E731
    search = SpatialSearch(_evaluator(trained_lenet, (1, 28, 28), digits28.calib, images=40), SearchConfig(),
                           progress=progress)  # fmt: skip
    dense = search.net.dense_accuracy
    options = {f"l{i}": [_Option(None, dense - 0.001 * (1 + i % 5), 10.0 + i), _Option(None, dense, 1.0)] for i in range(layers)}
    states = search._back_off_states(options, list(options))
    runs = []

    def network(key, rank):
        runs.append(states.index(rank))
        return Outcome(dense if meets(runs[-1]) else 0.0, float(len(rank)))

    search._masks, search._network = (lambda options, rank: dict(rank)), network
    return search, options, states, runs, calls


@pytest.mark.parametrize("first", [0, 1, 2, 5, 13, 30, 40])
def test_combining_layers_finds_the_first_state_that_meets_epsilon_in_a_few_passes(first, trained_lenet, digits28):
    """Along a back-off sequence where accuracy only rises, the state found is the first that
    meets epsilon (what stepping one state at a time finds), in about 2 log2 of its index runs."""
    search, options, states, runs, calls = _back_off_search(trained_lenet, digits28, 20, lambda i: i >= first)
    assert len(states) == 41 and states[0] == {f"l{i}": 0 for i in range(20)} and states[-1] == {}
    masks, points, outcome = search._greedy(options, list(options))
    assert masks == states[first] and len(set(runs)) == len(runs) and outcome.macs_saved == len(states[first])
    assert len(runs) <= 2 * (first + 1).bit_length() + 1 and (first < 6 or len(runs) < first + 1)
    assert 40 not in runs  # the last state transforms nothing: the dense network, not run
    assert [p.step for p in points] == [f"layer level {i}" for i in sorted(runs + [40] * (first == 40))]
    ends = [extra for _, extra in calls if extra.get("end")]  # one end, the last call, with the plan's figures
    assert len(ends) == 1 and calls[-1][1] is ends[0] and ends[0]["saved"] == len(states[first])
    dones = [done for done, _ in calls]  # one per state probed, and a closing one when the last failed
    probed = len(points)
    assert dones[: probed + 1] == list(range(probed + 1)) and dones[probed:] in ([probed], [probed] * 2)


def test_combining_layers_ends_at_a_state_that_meets_epsilon_when_accuracy_is_not_monotone(trained_lenet, digits28):
    search, options, states, runs, _ = _back_off_search(trained_lenet, digits28, 20, lambda i: i in (3, 9) or i >= 30)
    masks, _, _ = search._greedy(options, list(options))
    assert masks in (states[3], states[9], *states[30:]) and masks != states[0]


def test_invalid_search_options(trained_lenet, digits28):
    with pytest.raises(InputError, match="unknown mode 'uniform'"):
        SearchConfig(mode="uniform")
    with pytest.raises(InputError, match=r"epsilon must be in \[0, 1\)"):
        SearchConfig(epsilon=1.5)
    ev = _evaluator(trained_lenet, (1, 28, 28), digits28.calib, images=20)
    with pytest.raises(InputError, match="leaves no 2x2 pattern"):
        SpatialSearch(ev, SearchConfig(ones_range=(4, 4)))
    grouped = _evaluator(trained_lenet, (1, 28, 28), digits28.calib, images=20, spatial=SpatialConfig(channel_group=10))
    with pytest.raises(InputError, match="needs channel group 1"):
        SpatialSearch(grouped, SearchConfig(mode="uniform_patch"))
    result = SpatialSearch(grouped, SearchConfig(mode="uniform_layer", epsilon=0.02)).run()
    assert result.dense_accuracy - result.accuracy <= 0.02 + 1e-9  # grouped prediction searches too


def test_patch_size_three_with_a_ones_range(trained_lenet, digits28):
    ev = _evaluator(trained_lenet, (1, 28, 28), digits28.calib, images=150, spatial=SpatialConfig(patch_size=3))
    search = SpatialSearch(ev, SearchConfig(mode="uniform_layer", epsilon=0.01, ones_range=(1, 2)))
    assert len(search.patterns) == 9 + 36
    result = search.run()
    assert result.dense_accuracy - result.accuracy <= 0.01 + 1e-9
    for mask in result.masks.values():
        assert mask.shape[1] % 3 == 0  # padded to a multiple of 3


def test_measured_cost_keeps_only_options_that_save_time_and_prefers_the_most_saved(trained_lenet, digits28):
    ev = _evaluator(trained_lenet, (1, 28, 28), digits28.calib, images=120)
    timed = []

    def time_saved(layer, mask):
        timed.append(layer)
        ones = float(mask.float().mean())
        return -1.0 if layer == "conv1" else 1.0 - ones  # conv1 never faster; conv2 faster with fewer ones

    config = SearchConfig(mode="uniform_layer", epsilon=0.05, top_m=3, cost="measured")
    result = SpatialSearch(ev, config, time_saved=time_saved).run()
    assert set(timed) == {"conv1", "conv2"}
    assert "conv1" not in result.masks and "conv2" in result.masks  # conv1 saves no time: never chosen
    macs_only = SpatialSearch(ev, SearchConfig(mode="uniform_layer", epsilon=0.05, top_m=3)).run()
    assert "conv1" in macs_only.masks  # by MACs alone conv1 would have been predicted
    with pytest.raises(InputError, match="needs a layer timer"):
        SpatialSearch(ev, config).run()
    with pytest.raises(InputError, match="cost must be"):
        SearchConfig(cost="joules")


def test_a_network_state_is_checkpointed_under_what_it_transforms():
    """Not under its place in the back-off sequence: a resumed search whose sequence differs
    (other code, other risks) finds only records of the states it runs."""
    from sparsify_cnn.techniques.spatial.search import _state_key

    assert _state_key({"a": 0, "b": 2}) == _state_key({"b": 2, "a": 0})
    keys = {_state_key(rank) for rank in ({"a": 0, "b": 2}, {"a": 0, "b": 1}, {"a": 0}, {"b": 2}, {})}
    assert len(keys) == 5
