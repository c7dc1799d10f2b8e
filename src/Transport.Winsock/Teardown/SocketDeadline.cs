using System.Diagnostics;

namespace Transport.Winsock.Teardown;

/// <summary>
/// A one-shot, re-armable deadline for a socket's teardown phases (drain, reuse disconnect). One timer
/// per pooled socket, created at its first arming (a connection that never ends, such as an idle
/// keep-alive one, holds none) and reused by every connection that socket carries. Exactly one of
/// <see cref="TryDisarm"/> and the expiry callback wins.
/// </summary>
internal sealed class SocketDeadline : IDisposable
{
    private const int Idle = 0;
    private const int Armed = 1;
    private const int Expired = 2;

    private Timer? _timer;
    private Action<object>? _onExpired;
    private Action<object, long>? _onExpiredTagged;
    private object? _state;
    private long _tag;
    private long _dueTimestamp;
    private int _phase;

    private Timer Timer => Volatile.Read(ref _timer) ?? CreateTimer();

    private Timer CreateTimer()
    {
        Timer timer;
        using (ExecutionContext.SuppressFlow())
        {
            timer = new Timer(static s => ((SocketDeadline)s!).Fire(), this, Timeout.Infinite, Timeout.Infinite);
        }

        var raced = Interlocked.CompareExchange(ref _timer, timer, null);
        if (raced is null)
        {
            return timer;
        }

        timer.Dispose();
        return raced;
    }

    public void Arm(TimeSpan timeout, Action<object> onExpired, object state)
    {
        _onExpired = onExpired;
        _onExpiredTagged = null;
        ArmCore(timeout, state, tag: 0);
    }

    /// <summary>
    /// Arms with a tag that the callback gets back: the owner's generation when it was armed, so a pooled
    /// owner can tell a late expiry meant for its previous use from one meant for its current use.
    /// </summary>
    public void Arm(TimeSpan timeout, Action<object, long> onExpired, object state, long tag)
    {
        _onExpired = null;
        _onExpiredTagged = onExpired;
        ArmCore(timeout, state, tag);
    }

    private void ArmCore(TimeSpan timeout, object state, long tag)
    {
        _state = state;
        _tag = tag;
        Volatile.Write(ref _dueTimestamp, Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency));
        Volatile.Write(ref _phase, Armed);
        Timer.Change(timeout, Timeout.InfiniteTimeSpan);
    }

    /// <summary>Stops the deadline. False when it had already expired and its callback ran or is running.</summary>
    public bool TryDisarm()
    {
        var previous = Interlocked.CompareExchange(ref _phase, Idle, Armed);
        if (previous == Armed)
        {
            // Never armed, never created: nothing to stop.
            Volatile.Read(ref _timer)?.Change(Timeout.Infinite, Timeout.Infinite);
        }

        return previous != Expired;
    }

    private void Fire()
    {
        // A callback queued by an earlier arming can run late; it must not end the current phase early.
        var remaining = Volatile.Read(ref _dueTimestamp) - Stopwatch.GetTimestamp();
        if (remaining > 0)
        {
            if (Volatile.Read(ref _phase) == Armed)
            {
                Timer.Change(TimeSpan.FromSeconds((double)remaining / Stopwatch.Frequency), Timeout.InfiniteTimeSpan);
            }

            return;
        }

        if (Interlocked.CompareExchange(ref _phase, Expired, Armed) == Armed)
        {
            if (_onExpiredTagged is { } tagged)
            {
                tagged(_state!, _tag);
            }
            else
            {
                _onExpired!(_state!);
            }
        }
    }

    public void Dispose() => Volatile.Read(ref _timer)?.Dispose();
}
