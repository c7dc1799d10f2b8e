using System.Diagnostics;
using System.Net;
using Microsoft.Extensions.Logging;
using Transport.Winsock.Diagnostics;

namespace Transport.Winsock.AcceptPool;

/// <summary>
/// The listener's accept slots, paused together while the system is out of descriptors or buffers
/// (EMFILE, ENFILE, ENOBUFS; WSAEMFILE, WSAENOBUFS) or the process is within its descriptor reserve:
/// connections wait in the listen backlog instead of every slot retrying on a timer of its own. One slot
/// probes, after a back-off that doubles from 10 ms up to 1 s; the others wait for it. The pause ends
/// when the probe gets through (its accept succeeds, or for a reserve pause, the reserve has room again).
/// A connection of this listener that closes frees a descriptor, so it cuts the probe's wait short.
/// One Warning when a pause starts, one Information when it ends; a listener that pauses again and again
/// (only a few connections fit under its limit) warns at most once a minute, and logs the pauses between
/// at Debug, counted in the next warning.
/// </summary>
internal sealed class AcceptPause
{
    internal static readonly TimeSpan FirstBackoff = TimeSpan.FromMilliseconds(10);
    internal static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(1);
    private static readonly long WarnEvery = Stopwatch.Frequency * 60;

    private readonly EndPoint? _endPoint;
    private readonly WinsockTransportCounters _counters;
    private readonly ILogger _logger;
    private readonly AcceptedQueue? _queue;
    private readonly Lock _lock = new();
    // Non-null while paused: completes when the pause ends.
    private TaskCompletionSource? _resumed;
    // Completes when the probe should stop waiting: a connection closed, the pause ended, or a stop.
    private TaskCompletionSource? _wake;
    private bool _probeTaken;
    private bool _stopped;
    private bool _reserveOnly;
    private TimeSpan _backoff;
    private long _started;
    private long _failures;
    private long _lastWarning;
    private bool _everWarned;
    private long _quietPauses;
    private bool _warned;

    /// <param name="endPoint">The listener's address, for the log.</param>
    /// <param name="counters">Where pauses are counted.</param>
    /// <param name="logger">Where pauses are logged.</param>
    /// <param name="queue">The listener's queue of accepted connections: while it is full, no slot accepts.</param>
    public AcceptPause(EndPoint? endPoint, WinsockTransportCounters counters, ILogger logger, AcceptedQueue? queue = null)
    {
        _endPoint = endPoint;
        _counters = counters;
        _logger = logger;
        _queue = queue;
    }

    public bool IsPaused => Volatile.Read(ref _resumed) is not null;

    /// <summary>
    /// One accept slot's loop, the same for every engine: while paused, wait for this slot's turn (one
    /// slot probes after a back-off, the others wait for the pause to end), then one attempt; a slot that
    /// held the probe gives it back whatever the attempt's outcome. Before each attempt, while the
    /// listener's queue holds as many connections as it may, the slot waits for the server to take one.
    /// Ends once <paramref name="stopping"/> is true.
    /// </summary>
    public async Task RunSlotAsync<TState>(Func<TState, ValueTask> acceptOnce, TState state, Func<bool> stopping)
    {
        while (!stopping())
        {
            if (_queue is { } queue)
            {
                await queue.WaitForRoomAsync().ConfigureAwait(false);
                if (stopping())
                {
                    break;
                }
            }

            var probing = false;
            if (IsPaused)
            {
                probing = await WaitForTurnAsync().ConfigureAwait(false);
                if (stopping())
                {
                    break;
                }
            }

            try
            {
                await acceptOnce(state).ConfigureAwait(false);
            }
            finally
            {
                if (probing)
                {
                    ReleaseProbe();
                }
            }
        }
    }

    /// <summary>
    /// While paused, waits for this slot's turn: one slot waits the back-off and then probes, the others
    /// until the pause ends. Returns at once when not paused. True when this slot holds the probe: it must
    /// give it back with <see cref="ReleaseProbe"/> once its attempt is over, whatever the outcome.
    /// </summary>
    public async ValueTask<bool> WaitForTurnAsync()
    {
        Task resumed;
        TimeSpan backoff;
        Task wake;
        lock (_lock)
        {
            if (_resumed is null || _stopped)
            {
                return false;
            }

            if (_probeTaken)
            {
                resumed = _resumed.Task;
                backoff = TimeSpan.Zero;
                wake = Task.CompletedTask;
            }
            else
            {
                _probeTaken = true;
                resumed = Task.CompletedTask;
                backoff = _backoff;
                _backoff = TimeSpan.FromTicks(Math.Min(_backoff.Ticks * 2, MaxBackoff.Ticks));
                wake = _wake!.Task;
            }
        }

        if (backoff == TimeSpan.Zero)
        {
            await resumed.ConfigureAwait(false);
            return false;
        }

        // A connection that closes, or a stop, cuts the wait short.
        await Task.WhenAny(Task.Delay(backoff), wake).ConfigureAwait(false);
        return true;
    }

    /// <summary>The probing slot's attempt is over: another may probe after the next back-off.</summary>
    public void ReleaseProbe()
    {
        lock (_lock)
        {
            _probeTaken = false;
        }
    }

    /// <summary>
    /// An accept failed for want of descriptors or buffers, or a slot found the reserve reached
    /// (<paramref name="reserve"/>): starts a pause, or counts another failure in it.
    /// </summary>
    public void OnFault(string reason, bool reserve)
    {
        bool warned;
        lock (_lock)
        {
            _failures++;
            if (_resumed is not null || _stopped)
            {
                // A real exhaustion outlasts a reserve pause: only an accept ends it then.
                _reserveOnly &= reserve;
                return;
            }

            // Before the pause is seen: OnAccepted reads it without the lock.
            Volatile.Write(ref _reserveOnly, reserve);
            _wake = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Volatile.Write(ref _resumed, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
            _probeTaken = false;
            _backoff = FirstBackoff;
            _started = Stopwatch.GetTimestamp();
            _failures = 1;
            _warned = warned = !_everWarned || _started - _lastWarning >= WarnEvery;
            if (warned)
            {
                _everWarned = true;
                _lastWarning = _started;
            }
        }

        _counters.AcceptPauseStarted();
        if (warned)
        {
            _logger.AcceptPaused(_endPoint, reason, Interlocked.Exchange(ref _quietPauses, 0));
        }
        else
        {
            Interlocked.Increment(ref _quietPauses);
            _logger.AcceptPausedAgain(_endPoint, reason);
        }
    }

    /// <summary>
    /// An accept succeeded: ends a pause that a failed accept caused. A reserve pause outlives accepts
    /// posted before it and ends only when the reserve has room again.
    /// </summary>
    public void OnAccepted()
    {
        if (IsPaused && !Volatile.Read(ref _reserveOnly))
        {
            End();
        }
    }

    /// <summary>A slot found the reserve with room: ends a pause that only the reserve caused.</summary>
    public void OnReserveHasRoom()
    {
        if (IsPaused && Volatile.Read(ref _reserveOnly))
        {
            End();
        }
    }

    /// <summary>A connection of this listener closed, freeing a descriptor: the probe tries now.</summary>
    public void Wake()
    {
        if (!IsPaused)
        {
            return;
        }

        lock (_lock)
        {
            // A descriptor is free: probe now, and soon again after the next close (at most one probe
            // per close, then the back-off doubles from its start once more).
            _backoff = FirstBackoff;
            _wake?.TrySetResult();
            _wake = _resumed is null ? null : new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
    }

    /// <summary>The listener stops: nobody waits any more.</summary>
    public void Stop()
    {
        lock (_lock)
        {
            _stopped = true;
        }

        _queue?.Stop();
        End();
    }

    private void End()
    {
        TaskCompletionSource? resumed;
        long started, failures;
        bool warned;
        lock (_lock)
        {
            resumed = _resumed;
            if (resumed is null)
            {
                return;
            }

            _resumed = null;
            _probeTaken = false;
            _wake?.TrySetResult();
            _wake = null;
            started = _started;
            failures = _failures;
            warned = _warned;
        }

        var paused = Stopwatch.GetElapsedTime(started);
        _counters.AcceptPauseEnded(paused);
        if (warned)
        {
            _logger.AcceptResumed(_endPoint, paused, failures);
        }
        else
        {
            _logger.AcceptResumedAgain(_endPoint, paused, failures);
        }
        resumed.TrySetResult();
    }
}
