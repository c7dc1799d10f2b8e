using System.Net.Sockets;
using System.Threading.Tasks.Sources;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// One kind of operation that is in flight at most once at a time (a connection's receive, its send, a
/// listener slot's accept), registered once with its ring thread. Its user_data carries its index in the
/// thread's table and a generation bumped at every submission, so a completion meant for an earlier
/// submission (one canceled and raced) is recognised and dropped: it can never touch what the object
/// carries now.
/// </summary>
internal abstract class RingOperation
{
    private uint _generation;
    private bool _resync;

    protected RingOperation(RingThread thread)
    {
        Thread = thread;
        Index = thread.Register(this, out _generation);
    }

    public RingThread Thread { get; }

    public int Index { get; }

    /// <summary>The generation of the latest submission (an index freed goes on from it).</summary>
    public uint Generation => _generation;

    /// <summary>Whether a submission is in flight: set when prepared, cleared by its completion.</summary>
    public bool InFlight { get; private set; }

    /// <summary>The user_data of the next submission, which becomes the one in flight.</summary>
    protected ulong NextUserData()
    {
        _generation++;
        InFlight = true;
        Thread.OnSubmitted();
        return ((ulong)_generation << 32) | (uint)Index;
    }

    /// <summary>The user_data of the submission in flight, for a cancel.</summary>
    public ulong CurrentUserData => ((ulong)_generation << 32) | (uint)Index;

    /// <summary>
    /// Set for good once this object must not be used again: the kernel may still hold it when nothing
    /// will ever reap its completion (<see cref="Quarantine"/>), or its completion was lost
    /// (<see cref="OnLost"/>). Its owner replaces it, its native memory is never freed, its index never
    /// given to another operation.
    /// </summary>
    public bool Retired { get; private set; }

    /// <summary>Retires this object (see <see cref="Retired"/>).</summary>
    protected void Retire() => Retired = true;

    /// <summary>
    /// On the ring thread, as it ends with this operation still in the kernel: kept rooted for good
    /// (<see cref="RingQuarantine"/>) with whatever it holds, and retired. It stays in flight: its waiter is
    /// told only when the memory it would then reuse is the operation's own (<see cref="OnQuarantined"/>).
    /// </summary>
    public void Quarantine()
    {
        Retired = true;
        RingQuarantine.Keep(this);
        OnQuarantined();
    }

    /// <summary>What a quarantined operation does for its waiter; nothing by default.</summary>
    protected virtual void OnQuarantined()
    {
    }

    /// <summary>
    /// On the ring thread: the submission in flight gets a cancel of the ring's resync after a dropped
    /// completion (<see cref="RingThread"/>), which only asks whether the kernel still holds it: if that
    /// cancel ends it, it is submitted again (<see cref="Resubmit"/>) rather than completed.
    /// </summary>
    public void MarkResync() => _resync = true;

    /// <summary>On the ring thread: a completion arrived for this operation's index; false when it was stale.</summary>
    public bool OnCompletion(ulong userData, int result, uint flags)
    {
        if ((uint)(userData >> 32) != _generation || !InFlight)
        {
            return false;
        }

        InFlight = false;
        var resync = _resync;
        _resync = false;
        if (resync && result == -LinuxNative.ECANCELED)
        {
            Resubmit();
            return true;
        }

        Complete(result, flags);
        return true;
    }

    /// <summary>
    /// On the ring thread: the kernel no longer holds the submission in flight and its completion never
    /// came (the kernel dropped it): the kernel is done with it, and so is this operation, as
    /// <see cref="Lost"/> decides.
    /// </summary>
    public void OnLost()
    {
        InFlight = false;
        _resync = false;
        Lost();
    }

    /// <summary>A submission the resync's cancel ended goes again; by default it completes as canceled.</summary>
    protected virtual void Resubmit() => Complete(-LinuxNative.ECANCELED, 0);

    /// <summary>What a lost completion means; by default a failure (EIO) through <see cref="Complete"/>.</summary>
    protected virtual void Lost() => Complete(-LinuxNative.EIO, 0);

    protected abstract void Complete(int result, uint flags);
}

/// <summary>
/// A <see cref="RingOperation"/> that is its own awaitable, as <see cref="Sockets.AwaitableSocketEventArgs"/> is
/// for the Sockets engine: the result is the kernel's, a negative errno surfaces as a
/// <see cref="SocketException"/> with the matching socket error. Continuations run inline on the ring
/// thread, where the transport's own work belongs.
/// </summary>
internal abstract class AwaitableRingOperation(RingThread thread) : RingOperation(thread), IValueTaskSource<int>
{
    private static readonly Action<object?> s_submit = static state => ((AwaitableRingOperation)state!).SubmitOnRing();

    private ManualResetValueTaskSourceCore<int> _source = new() { RunContinuationsAsynchronously = false };

    /// <summary>Prepares the operation here when on the ring thread, else has the ring thread do it.</summary>
    protected ValueTask<int> Start()
    {
        var task = new ValueTask<int>(this, _source.Version);
        if (Thread.IsCurrent)
        {
            SubmitOnRing();
        }
        else
        {
            Thread.Post(s_submit, this);
        }

        return task;
    }

    /// <summary>
    /// On the ring thread: prepares the (next) submission, or finishes the waiter with why it cannot
    /// start; when the ring fails under it, the waiter still hears of it (EIO) before the failure goes on.
    /// </summary>
    protected void SubmitOnRing()
    {
        bool prepared;
        int errno;
        try
        {
            prepared = TryPrepare(out errno);
        }
        catch
        {
            // The ring failed under the submission: its waiter must still hear of it.
            Finish(-LinuxNative.EIO);
            throw;
        }

        if (!prepared)
        {
            Finish(-errno);
        }
    }

    /// <summary>On the ring thread: fills a submission entry, or says why the operation cannot start.</summary>
    protected abstract bool TryPrepare(out int errno);

    /// <summary>The same submission again, after the resync's cancel ended it (it transferred nothing).</summary>
    protected override void Resubmit()
    {
        ReleaseForResubmit();
        SubmitOnRing();
    }

    /// <summary>Lets go of what the ended submission pinned, keeping what the next one needs.</summary>
    protected virtual void ReleaseForResubmit()
    {
    }

    /// <summary>
    /// The completion was lost: what it carried (bytes received or sent, a descriptor accepted) is unknown,
    /// so the waiter fails (EIO, which ends a connection) and this object is retired, its owner making
    /// another for the next use.
    /// </summary>
    protected override void Lost()
    {
        Retire();
        Finish(-LinuxNative.EIO);
    }

    protected override void Complete(int result, uint flags) => Finish(result);

    /// <summary>Ends the awaited operation with the kernel's result.</summary>
    protected void Finish(int result)
    {
        OnFinished();
        if (result >= 0)
        {
            _source.SetResult(result);
        }
        else
        {
            _source.SetException(new SocketException((int)Errors.ToSocketError(-result)));
        }
    }

    /// <summary>
    /// Whether a submission in flight holds memory its waiter hands back once it resumes (a receive's pipe
    /// buffer, a send's): a quarantined one then never resumes its waiter. True unless an operation says otherwise.
    /// </summary>
    protected virtual bool HoldsCallerMemory => true;

    /// <summary>A quarantined operation whose memory is all its own ends its waiter as a local abort; the rest never resume it.</summary>
    protected override void OnQuarantined()
    {
        if (!HoldsCallerMemory)
        {
            Finish(-LinuxNative.ECANCELED);
        }
    }

    /// <summary>Releases what the submission held (pinned memory) before the waiter resumes.</summary>
    protected virtual void OnFinished()
    {
    }

    /// <summary>
    /// Registers <paramref name="continuation"/> for the operation pending, as an awaiter's UnsafeOnCompleted
    /// would (no ExecutionContext flows) but with a static delegate and its state, so that a connection keeps
    /// no delegate of its own for it. Only for an operation whose ValueTask did not complete at once.
    /// </summary>
    public void UnsafeOnCompleted(Action<object?> continuation, object state)
        => _source.OnCompleted(continuation, state, _source.Version, ValueTaskSourceOnCompletedFlags.None);

    /// <summary>The result of the operation whose continuation <see cref="UnsafeOnCompleted"/> registered, once it ran (once).</summary>
    public int TakeResult() => ((IValueTaskSource<int>)this).GetResult(_source.Version);

    int IValueTaskSource<int>.GetResult(short token)
    {
        // A stale token or an operation still pending is a caller's error, and must not reset (or give
        // back to a pool) an operation the kernel may still hold: refused before anything changes.
        if (token != _source.Version || _source.GetStatus(token) == ValueTaskSourceStatus.Pending)
        {
            throw new InvalidOperationException("The operation's result was asked for with a stale token or before it completed.");
        }

        try
        {
            return _source.GetResult(token);
        }
        finally
        {
            _source.Reset();
            OnResultTaken();
        }
    }

    /// <summary>After the waiter took the result (once per operation): the object may be used for another.</summary>
    protected virtual void OnResultTaken()
    {
    }

    ValueTaskSourceStatus IValueTaskSource<int>.GetStatus(short token) => _source.GetStatus(token);

    void IValueTaskSource<int>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _source.OnCompleted(continuation, state, token, flags);
}

/// <summary>errno as the connection's loops sort failures (<see cref="Connections.SocketErrors"/>).</summary>
internal static class Errors
{
    public static SocketError ToSocketError(int errno) => errno switch
    {
        LinuxNative.ECONNRESET => SocketError.ConnectionReset,
        LinuxNative.EPIPE => SocketError.Shutdown,
        // Canceled by a close of ours, or the descriptor is gone: this side ended it.
        LinuxNative.ECANCELED or LinuxNative.EBADF => SocketError.OperationAborted,
        LinuxNative.EINTR => SocketError.Interrupted,
        LinuxNative.ENOTCONN => SocketError.NotConnected,
        LinuxNative.ECONNABORTED => SocketError.ConnectionAborted,
        LinuxNative.EMFILE or LinuxNative.ENFILE => SocketError.TooManyOpenSockets,
        LinuxNative.ENOBUFS or LinuxNative.ENOMEM => SocketError.NoBufferSpaceAvailable,
        LinuxNative.EAGAIN => SocketError.WouldBlock,
        LinuxNative.EINVAL => SocketError.InvalidArgument,
        LinuxNative.ETIMEDOUT => SocketError.TimedOut,
        LinuxNative.EACCES or LinuxNative.EPERM => SocketError.AccessDenied,
        LinuxNative.EAFNOSUPPORT => SocketError.AddressFamilyNotSupported,
        LinuxNative.ECONNREFUSED => SocketError.ConnectionRefused,
        LinuxNative.EADDRNOTAVAIL => SocketError.AddressNotAvailable,
        113 => SocketError.HostUnreachable,
        101 => SocketError.NetworkUnreachable,
        _ => SocketError.SocketError,
    };
}
