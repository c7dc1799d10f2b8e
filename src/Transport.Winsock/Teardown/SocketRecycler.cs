using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Diagnostics;

namespace Transport.Winsock.Teardown;

/// <summary>
/// Recycles the sockets of passive closes (the peer's FIN came first, then ours): a reuse disconnect
/// (DisconnectEx with TF_REUSE_SOCKET on Windows), bounded in time and in number, then back to the pool.
/// Sockets of active closes never come here: they are in TIME_WAIT, which a reuse disconnect would wait
/// out. Runs detached from the connection, so a slow disconnect never holds a connection, a thread or the
/// pool; one that fails or times out only costs its socket. When reuse was decided automatically, a run
/// of real recycle failures (<see cref="FailuresBeforeFallback"/> of the last <see cref="FallbackWindow"/>
/// recycles) turns it off and closes the pooled sockets, as Apache httpd gives up AcceptEx reuse after
/// repeated faults. The failures that count: a reuse disconnect that fails, one that does not finish in
/// time, and an accept or connect into a recycled socket that fails as if the socket had not been
/// recycled (WSAEINVAL, WSAENOTSOCK). A disconnect that fails with a reset (the peer reset after our FIN)
/// is that connection's, not the platform's, and does not count. A recycled socket accepted or connected
/// into is a success. Off after a fallback, or after a self-test that failed (a timeout under startup
/// load, say), reuse is tried again: the self-test runs again after <see cref="FirstRetest"/>, then after
/// twice as long each time it fails, up to <see cref="MaxRetest"/>, and reuse comes back when it passes.
/// This recycler is where the reuse status lives: the counters and /stats read it from here.
/// </summary>
internal sealed class SocketRecycler : IDisposable
{
    internal const int FailuresBeforeFallback = 10;
    internal const int FallbackWindow = 20;
    internal static readonly TimeSpan FirstRetest = TimeSpan.FromSeconds(30);
    internal static readonly TimeSpan MaxRetest = TimeSpan.FromMinutes(30);
    private const ulong WindowMask = (1UL << FallbackWindow) - 1;

    private readonly SocketPool _pool;
    private readonly TimeSpan _disconnectTimeout;
    private readonly int _maxPending;
    private bool _canFallBack;
    private readonly object _subject;
    private readonly WinsockTransportCounters _counters;
    private readonly ILogger _logger;
    private readonly HashSet<ReusableSocket> _pending = [];
    private readonly Lock _lock = new();
    private readonly Action<object> _onDisconnectExpired;
    private volatile bool _active;
    private volatile string _status;
    private bool _fellBack;
    // The last recycles' outcomes, the newest in bit 0: 1 for a failure.
    private ulong _outcomes;
    private readonly Func<Task<ReuseDecision>>? _retest;
    private TimeSpan _retestDelay;
    private Timer? _retestTimer;
    private bool _disposed;

    public SocketRecycler(
        SocketPool pool,
        WinsockTransportOptions options,
        ReuseDecision decision,
        object subject,
        WinsockTransportCounters counters,
        ILogger logger,
        Func<Task<ReuseDecision>>? retest = null,
        TimeSpan? firstRetest = null)
    {
        _pool = pool;
        _retest = retest;
        _retestDelay = firstRetest ?? FirstRetest;
        _disconnectTimeout = options.DisconnectTimeout;
        _maxPending = options.MaxPendingDisconnects;
        _active = decision.Active;
        _canFallBack = decision.Automatic;
        _status = decision.Reason;
        _subject = subject;
        _counters = counters;
        _logger = logger;
        _onDisconnectExpired = state => OnDisconnectExpired((ReusableSocket)state);
        ScheduleRetestIfOff(decision);
    }

    /// <summary>
    /// For tests: called with each socket just before its reuse disconnect starts, so a test can make the
    /// disconnect throw what the platform would only throw after a fault (an InvalidOperationException
    /// from .NET, say). Null in production.
    /// </summary>
    internal Action<ReusableSocket>? DisconnectFaultForTests { get; set; }

    /// <summary>Whether sockets are recycled at all; false from the start, or after a fallback.</summary>
    public bool IsActive => _active;

    /// <summary>Why sockets are recycled or not, in words for /stats: the decision's reason, or the fallback's.</summary>
    public string Status => _status;

    /// <summary>
    /// A decision that came after the recycler was made (the outbound side's self-test runs while its first
    /// connections are already under way; until then nothing is recycled). A fallback already taken stays.
    /// </summary>
    public void Apply(ReuseDecision decision)
    {
        lock (_lock)
        {
            if (_disposed || _fellBack)
            {
                return;
            }

            _canFallBack = decision.Automatic;
            _status = decision.Reason;
            _active = decision.Active;
        }

        ScheduleRetestIfOff(decision);
    }

    /// <summary>Takes ownership of a cleanly finished connection's socket: it ends up pooled or closed.</summary>
    public void Recycle(ReusableSocket socket)
    {
        lock (_lock)
        {
            // A full pool would not take the socket back: a reuse disconnect would only delay its close.
            if (!_active || _disposed || _pending.Count >= _maxPending || _pool.IsFull)
            {
                socket.Dispose();
                return;
            }

            _pending.Add(socket);
        }

        _counters.PendingDisconnectsChanged(1);
        _counters.ReuseDisconnectStarted();
        _ = DisconnectAsync(socket);
    }

    private async Task DisconnectAsync(ReusableSocket socket)
    {
        socket.DisconnectStarted = System.Diagnostics.Stopwatch.GetTimestamp();
        var error = SocketError.Success;
        Exception? unexpected = null;
        try
        {
            DisconnectFaultForTests?.Invoke(socket);
            var disconnect = socket.Disconnector.DisconnectAsync(socket.Socket);
            if (!disconnect.IsCompleted)
            {
                // Only a disconnect that is really pending needs a deadline (where .NET emulates reuse it
                // completes at once). Should it complete between the check and the arming, the disarm
                // below, after the await, still sees the arming.
                socket.Deadline.Arm(_disconnectTimeout, _onDisconnectExpired, socket);
            }

            await disconnect;
        }
        catch (SocketException ex)
        {
            error = ex.SocketErrorCode;
        }
        catch (ObjectDisposedException)
        {
            error = SocketError.OperationAborted;
        }
        catch (Exception ex)
        {
            // Anything else (.NET refusing the socket with an InvalidOperationException, say) ends this
            // socket's recycle the same way: left uncaught, it would end this task with the socket still in
            // the pending set, open, holding a slot of MaxPendingDisconnects for good.
            error = SocketError.SocketError;
            unexpected = ex;
        }

        if (!socket.Deadline.TryDisarm() || !Release(socket))
        {
            // The timeout or Dispose got there first and has already closed and counted the socket;
            // the operation has ended now, so its event args can go too.
            socket.Dispose();
            return;
        }

        _counters.DisconnectFinished(socket.DisconnectStarted, error == SocketError.Success ? "success" : "failure");
        if (error != SocketError.Success)
        {
            _counters.DisconnectFailure();
            if (unexpected is null)
            {
                _logger.DisconnectFailed(error);
            }
            else
            {
                _logger.DisconnectThrew(unexpected);
            }

            socket.Dispose();
            if (!IsConnectionsOwn(error))
            {
                OnFailure(unexpected is null ? error.ToString() : $"{unexpected.GetType().Name}: {unexpected.Message}");
            }

            return;
        }

        // Not a success yet: that is the accept into it (OnRecycledAccept). Reuse may have gone off meanwhile.
        if (!_active || !_pool.TryReturn(socket))
        {
            socket.Dispose();
        }
    }

    private void OnDisconnectExpired(ReusableSocket socket)
    {
        if (!Release(socket))
        {
            return;
        }

        _counters.DisconnectTimeout();
        _counters.DisconnectFinished(socket.DisconnectStarted, "timeout");
        _logger.DisconnectTimedOut(_disconnectTimeout);
        // Closing the handle cancels the disconnect where the platform can; where it cannot (Wine), the
        // operation is abandoned with its socket.
        socket.Close(abortive: false);
        OnFailure($"no completion within {_disconnectTimeout.TotalMilliseconds:0} ms");
    }

    /// <summary>
    /// A disconnect that failed because the peer reset the connection (after our FIN: a client that sent
    /// its request and closed at once) says nothing of the platform's reuse.
    /// </summary>
    internal static bool IsConnectionsOwn(SocketError error)
        => error is SocketError.ConnectionReset or SocketError.ConnectionAborted or SocketError.NetworkReset;

    /// <summary>An accept (or connect) into a socket from the pool succeeded: the whole recycle worked.</summary>
    public void OnRecycledAccept()
    {
        // Most often every recent outcome was a success already: then there is nothing to write.
        if ((Volatile.Read(ref _outcomes) & WindowMask) != 0)
        {
            Record(failure: false);
        }
    }

    /// <summary>Adds an outcome to the window; returns the failures among the last <see cref="FallbackWindow"/>.</summary>
    private int Record(bool failure)
    {
        ulong old, now;
        do
        {
            old = Volatile.Read(ref _outcomes);
            now = (old << 1) | (failure ? 1UL : 0UL);
        }
        while (Interlocked.CompareExchange(ref _outcomes, now, old) != old);
        return System.Numerics.BitOperations.PopCount(now & WindowMask);
    }

    /// <summary>
    /// An accept into a socket from the pool failed as if the socket had not been recycled; the caller
    /// has closed it. <paramref name="failure"/> says how, for the fallback's reason.
    /// </summary>
    public void OnRecycledAcceptFailed(string failure)
    {
        _counters.RecycledAcceptFailed();
        OnFailure($"an accept into a recycled socket failed: {failure}");
    }

    private void OnFailure(string failure)
    {
        // Once off, failures of sockets still on their way (a pending disconnect, a posted accept into a
        // recycled socket) change nothing.
        if (!_canFallBack || !_active)
        {
            return;
        }

        var failures = Record(failure: true);
        if (failures < FailuresBeforeFallback)
        {
            return;
        }

        TimeSpan retestIn;
        lock (_lock)
        {
            if (_fellBack || _disposed || !_active)
            {
                return;
            }

            _fellBack = true;
            _active = false;
            retestIn = _retestDelay;
            _status = $"off: {failures} of the last {FallbackWindow} recycles failed (the last: {failure})"
                + (_retest is null ? "" : $"; the self-test runs again in {retestIn.TotalSeconds:0} s");
        }

        _logger.ReuseFallback(_subject, failures, FallbackWindow, failure);
        // Nothing will be accepted into them any more: close them now, not when the listener goes. A
        // disconnect still pending closes its socket when it ends, as reuse is off by then.
        _pool.Clear();
        ScheduleRetest();
    }

    /// <summary>Off by a self-test's verdict that may change (not the platform's emulation, not a missing DisconnectEx): test again later.</summary>
    private void ScheduleRetestIfOff(ReuseDecision decision)
    {
        if (!decision.Active && decision.Retestable)
        {
            ScheduleRetest();
        }
    }

    private void ScheduleRetest()
    {
        if (_retest is null)
        {
            return;
        }

        lock (_lock)
        {
            if (_disposed || _retestTimer is not null)
            {
                return;
            }

            using (ExecutionContext.SuppressFlow())
            {
                _retestTimer = new Timer(static state => _ = ((SocketRecycler)state!).RetestAsync(), this, _retestDelay, Timeout.InfiniteTimeSpan);
            }
        }
    }

    private async Task RetestAsync()
    {
        ReuseDecision decision;
        try
        {
            decision = await _retest!().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            decision = new ReuseDecision(false, true, $"off: the reuse self-test threw {ex.GetType().Name}: {ex.Message}") { Retestable = true };
        }

        lock (_lock)
        {
            _retestTimer?.Dispose();
            _retestTimer = null;
            if (_disposed)
            {
                return;
            }

            var after = _retestDelay;
            _retestDelay = TimeSpan.FromTicks(Math.Min(_retestDelay.Ticks * 2, MaxRetest.Ticks));
            if (decision.Active)
            {
                _fellBack = false;
                Volatile.Write(ref _outcomes, 0);
                _canFallBack = decision.Automatic;
                _status = $"{decision.Reason} (again, {after.TotalSeconds:0} s after reuse went off)";
                _active = true;
            }
            else
            {
                _status = $"{decision.Reason}; the self-test runs again in {_retestDelay.TotalSeconds:0} s";
            }
        }

        if (decision.Active)
        {
            _logger.ReuseRestored(_subject, _status);
        }
        else if (decision.Retestable)
        {
            ScheduleRetest();
        }
    }

    private bool Release(ReusableSocket socket)
    {
        lock (_lock)
        {
            if (!_pending.Remove(socket))
            {
                return false;
            }
        }

        _counters.PendingDisconnectsChanged(-1);
        return true;
    }

    /// <summary>Closes every socket still in a disconnect; each one's pending operation then ends with an error.</summary>
    public void Dispose()
    {
        ReusableSocket[] pending;
        lock (_lock)
        {
            _disposed = true;
            pending = [.. _pending];
            _pending.Clear();
            _retestTimer?.Dispose();
            _retestTimer = null;
        }

        _counters.PendingDisconnectsChanged(-pending.Length);
        foreach (var socket in pending)
        {
            socket.Close(abortive: false);
        }
    }
}
