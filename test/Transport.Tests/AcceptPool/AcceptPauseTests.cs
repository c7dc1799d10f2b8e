using System.Diagnostics;
using System.Net;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.AcceptPool;

namespace Transport.Tests.AcceptPool;

/// <summary>The listener-wide accept pause: one probe at a time, the others waiting, and every way out of it.</summary>
public sealed class AcceptPauseTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Not_paused_every_slot_goes_on_at_once()
    {
        var (pause, _, _) = Create();
        Assert.False(pause.IsPaused);
        Assert.False(await pause.WaitForTurnAsync());
    }

    [Fact]
    public async Task One_slot_probes_after_the_back_off_the_others_wait_until_an_accept_ends_the_pause()
    {
        var (pause, counters, _) = Create();
        pause.OnFault("accepts fail with TooManyOpenSockets", reserve: false);
        Assert.True(pause.IsPaused);
        Assert.Equal(1, counters.ListenersPaused);

        var started = Stopwatch.StartNew();
        var probe = pause.WaitForTurnAsync().AsTask();
        // The probe waits for its back-off: not at once. Timers only bound it loosely (under Wine a 10 ms
        // delay was seen to end after 4.7 ms), so the elapsed time is checked with that slack.
        Assert.False(probe.IsCompleted, "the probe did not wait for its back-off");
        Assert.True(await probe.WaitAsync(Bound, TestContext.Current.CancellationToken));
        Assert.True(started.Elapsed >= AcceptPause.FirstBackoff / 4, $"probed after {started.Elapsed}");

        // The probe is taken: another slot waits for the pause to end.
        var waiting = pause.WaitForTurnAsync().AsTask();
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(waiting.IsCompleted);

        pause.OnAccepted();
        Assert.False(await waiting.WaitAsync(Bound, TestContext.Current.CancellationToken));
        Assert.False(pause.IsPaused);
        Assert.Equal(1, counters.AcceptPauses);
        Assert.Equal(0, counters.ListenersPaused);
        Assert.InRange(counters.AcceptPausedTime, TimeSpan.FromMilliseconds(50), Bound);
    }

    [Fact]
    public async Task A_probe_that_ends_in_any_other_way_is_given_back_and_the_next_slot_probes()
    {
        // The probing slot's accept failed for a reason of its own (a reset client): no fault, no accept.
        var (pause, _, _) = Create();
        pause.OnFault("accepts fail with TooManyOpenSockets", reserve: false);
        Assert.True(await pause.WaitForTurnAsync().AsTask().WaitAsync(Bound, TestContext.Current.CancellationToken));
        var next = pause.WaitForTurnAsync().AsTask();
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(next.IsCompleted);

        pause.ReleaseProbe();
        // The slot that was waiting for the pause to end goes on; the one that comes round next probes.
        var again = pause.WaitForTurnAsync().AsTask();
        Assert.True(await again.WaitAsync(Bound, TestContext.Current.CancellationToken));
        Assert.True(pause.IsPaused);
    }

    [Fact]
    public async Task A_closing_connection_cuts_the_probes_back_off_short()
    {
        var (pause, _, _) = Create();
        // Failed probes double the back-off: 10, 20, 40 ... ms, up to 1 s.
        pause.OnFault("accepts fail with TooManyOpenSockets", reserve: false);
        for (var i = 0; i < 8; i++)
        {
            Assert.True(await pause.WaitForTurnAsync().AsTask().WaitAsync(Bound, TestContext.Current.CancellationToken));
            pause.OnFault("accepts fail with TooManyOpenSockets", reserve: false);
            pause.ReleaseProbe();
        }

        var started = Stopwatch.StartNew();
        var probe = pause.WaitForTurnAsync().AsTask();
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(probe.IsCompleted);
        pause.Wake();
        Assert.True(await probe.WaitAsync(Bound, TestContext.Current.CancellationToken));
        Assert.True(started.Elapsed < AcceptPause.MaxBackoff, $"the probe waited {started.Elapsed} after a close");
    }

    [Fact]
    public async Task A_reserve_pause_outlives_accepts_posted_before_it_and_ends_when_the_reserve_has_room()
    {
        var (pause, _, _) = Create();
        pause.OnFault("the process has 128 or fewer of its 512 descriptors left (DescriptorReserve)", reserve: true);
        pause.OnAccepted();
        Assert.True(pause.IsPaused);

        pause.OnReserveHasRoom();
        Assert.False(pause.IsPaused);
        Assert.False(await pause.WaitForTurnAsync());
    }

    [Fact]
    public async Task Stop_releases_every_waiting_slot()
    {
        var (pause, _, _) = Create();
        pause.OnFault("accepts fail with NoBufferSpaceAvailable", reserve: false);
        Assert.True(await pause.WaitForTurnAsync().AsTask().WaitAsync(Bound, TestContext.Current.CancellationToken));
        var waiting = pause.WaitForTurnAsync().AsTask();

        pause.Stop();
        Assert.False(await waiting.WaitAsync(Bound, TestContext.Current.CancellationToken));
        Assert.False(pause.IsPaused);
        Assert.False(await pause.WaitForTurnAsync());
    }

    [Fact]
    public void A_listener_that_pauses_again_and_again_warns_once_a_minute()
    {
        var (pause, counters, log) = Create();
        for (var i = 0; i < 5; i++)
        {
            pause.OnFault("accepts fail with TooManyOpenSockets", reserve: false);
            pause.OnAccepted();
        }

        Assert.Equal(5, counters.AcceptPauses);
        Assert.Equal(LogLevel.Warning, Assert.Single(log.Entries, e => e.EventId.Name == "AcceptPaused").Level);
        Assert.Equal(LogLevel.Information, Assert.Single(log.Entries, e => e.EventId.Name == "AcceptResumed").Level);
        Assert.Equal(4, log.Entries.Count(e => e.EventId.Name == "AcceptPausedAgain" && e.Level == LogLevel.Debug));
        Assert.Equal(4, log.Entries.Count(e => e.EventId.Name == "AcceptResumedAgain" && e.Level == LogLevel.Debug));
    }

    private static (AcceptPause Pause, WinsockTransportCounters Counters, CapturedLog Log) Create()
    {
        var counters = new WinsockTransportCounters();
        var log = new CapturedLog();
        return (new AcceptPause(new IPEndPoint(IPAddress.Loopback, 5000), counters, log.CreateLogger("Transport.Winsock")), counters, log);
    }
}
