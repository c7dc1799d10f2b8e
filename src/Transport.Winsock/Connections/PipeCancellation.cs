using System.IO.Pipelines;

namespace Transport.Winsock.Connections;

/// <summary>
/// The cancellation token of a pipe's one awaited operation that takes a token (<see cref="InputPipe"/>'s
/// read, <see cref="OutputPipe"/>'s flush), while it waits: registered as it begins to wait, taken in its
/// GetResult, dropped at Reset. Whether the token ended it is the <see cref="PipeWaiter"/>'s to say.
/// </summary>
/// <remarks>
/// A mutable struct in a field of its pipe, used only through that field (never copied), so it costs the
/// pipe no object of its own. Changed only under its pipe's lock.
/// </remarks>
internal struct PipeCancellation
{
    private CancellationTokenRegistration _registration;
    private CancellationToken _token;

    /// <summary>Under the lock, right after the waiter's Begin: <paramref name="onCanceled"/> runs if <paramref name="token"/> is cancelled.</summary>
    public void Register(Action<object?> onCanceled, object state, CancellationToken token)
    {
        // A registration left by an operation whose result was never taken; Unregister, not Dispose:
        // Dispose would wait, under this lock, for a callback that needs it.
        _registration.Unregister();
        _token = token;
        if (token.CanBeCanceled)
        {
            // UnsafeRegister: the callback only completes the operation, which schedules its continuation.
            _registration = token.UnsafeRegister(onCanceled, state);
        }
    }

    /// <summary>
    /// The registered callback: under <paramref name="gate"/>, ends <paramref name="waiter"/> as cancelled by
    /// its token, and runs its continuation (if due) on <paramref name="scheduler"/>.
    /// </summary>
    public void OnCanceled(Lock gate, ref PipeWaiter waiter, PipeScheduler scheduler)
    {
        PipeWaiter wake = default;
        lock (gate)
        {
            // Only the waiting operation's own token: a registration left from an earlier one does nothing.
            if (waiter.IsWaiting && _token.IsCancellationRequested)
            {
                wake = waiter.CompleteByToken();
            }
        }

        wake.Run(scheduler);
    }

    /// <summary>
    /// Under the lock, in GetResult: ends <paramref name="waiter"/>'s operation and hands back its
    /// registration, to dispose outside the lock (disposing waits for a callback that is running, and the
    /// callback takes the lock); <paramref name="canceledBy"/> is the token when it ended the operation, else default.
    /// </summary>
    public CancellationTokenRegistration End(ref PipeWaiter waiter, short token, out CancellationToken canceledBy)
    {
        waiter.End(token);
        var registration = _registration;
        canceledBy = waiter.CanceledByToken ? _token : default;
        _registration = default;
        _token = default;
        return registration;
    }

    /// <summary>Under the lock: the pipe is reset for its next connection, and an old token cancels nothing of it.</summary>
    public void Reset()
    {
        _registration.Unregister();
        _registration = default;
        _token = default;
    }
}
