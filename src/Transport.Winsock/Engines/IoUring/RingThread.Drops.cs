using Transport.Winsock.Diagnostics;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// A dropped completion. Since 5.19 the kernel may drop a completion when it cannot allocate an overflow
/// entry, and says so once, with EBADR from a waiting io_uring_enter; it does not say whose. The ring goes
/// on: the drop is counted (<see cref="DroppedCompletions"/>) and logged at most once a minute, and a
/// resync finds out whose it was. Every operation in flight then gets a cancel of its user_data whose
/// answer is reported: one the kernel still held ends as canceled and is submitted again
/// (<see cref="RingOperation.MarkResync"/>: a canceled receive or send transferred nothing); one it ran
/// meanwhile answers EALREADY and completes as usual; one it no longer knows (ENOENT) is a suspect. After
/// a NOP through the ring and 100 ms, in which a completion already under way would have come, a suspect
/// still waiting is lost (<see cref="LostOperations"/>, <see cref="RingOperation.OnLost"/>): a lost poll
/// or wake-up read is armed again; a lost receive or send fails its connection (the bytes it moved are
/// unknown), which ends at once rather than by its timeouts, and the operation object is retired, never
/// used again; a lost accept's descriptor is unknown and stays open (its client waits for its own timeout).
/// The completion queue is sized so that none of this happens in normal operation (see RingCapacity).
/// </summary>
internal sealed unsafe partial class RingThread
{
    private const long JudgeAfterMs = 100;
    private static readonly long WarnEveryMs = (long)TimeSpan.FromMinutes(1).TotalMilliseconds;

    private readonly List<ulong> _suspects = [];
    private int _dropped;
    private int _lost;
    private int _dropsSinceWarning;
    private long _lastDropWarning = long.MinValue;
    private bool _resyncWanted;
    private int _answersDue;
    private bool _barrierDue;
    private long _judgeAt;
    private bool _dropInjected;

    /// <summary>
    /// The seam where tests make the kernel drop a completion: when it answers true for an operation and
    /// its result, that completion is discarded and the next enter answers EBADR, as the kernel would.
    /// </summary>
    internal static Func<RingOperation, int, bool>? DropFault { get; set; }

    /// <summary>Completions the kernel said it dropped (EBADR from io_uring_enter).</summary>
    public int DroppedCompletions => Volatile.Read(ref _dropped);

    /// <summary>Operations (and wake-up reads) resyncs have asked the kernel about; for tests.</summary>
    internal int ResyncCancels { get; private set; }

    /// <summary>Operations a resync found lost: the kernel no longer held them and their completion never came.</summary>
    public int LostOperations => Volatile.Read(ref _lost);

    private bool Resyncing => _answersDue > 0 || _barrierDue || _suspects.Count > 0;

    /// <summary>On the ring thread: io_uring_enter answered EBADR.</summary>
    private void OnDropReported()
    {
        Interlocked.Increment(ref _dropped);
        _dropsSinceWarning++;
        _resyncWanted = true;
        var now = Environment.TickCount64;
        if (_lastDropWarning == long.MinValue || now - _lastDropWarning >= WarnEveryMs)
        {
            _lastDropWarning = now;
            _logger.RingCompletionsDropped(_thread.Name ?? "io_uring", _dropsSinceWarning, DroppedCompletions);
            _dropsSinceWarning = 0;
        }
    }

    /// <summary>From the loop, after reaping: starts a resync that a drop asked for, or judges its suspects once it is time.</summary>
    private void StepResync()
    {
        if (_resyncWanted && !Resyncing)
        {
            StartResync();
        }
        else if (_suspects.Count > 0 && _answersDue == 0 && !_barrierDue && Environment.TickCount64 >= _judgeAt)
        {
            Judge();
        }
    }

    private void StartResync()
    {
        _resyncWanted = false;
        var operations = Volatile.Read(ref _operations);
        for (var i = FirstIndex; i < operations.Length; i++)
        {
            if (operations[i] is { InFlight: true, Retired: false } operation)
            {
                operation.MarkResync();
                SubmitResyncCancel(operation.CurrentUserData);
            }
        }

        if (_wakeArmed)
        {
            SubmitResyncCancel(WakeUserData);
        }
    }

    private void SubmitResyncCancel(ulong userData)
    {
        var sqe = NextSqe();
        sqe->Opcode = CancelFault ? RingConstants.OpNop : RingConstants.OpAsyncCancel;
        sqe->Fd = -1;
        sqe->Addr = userData;
        // No CQE_SKIP_SUCCESS: every answer is counted.
        sqe->UserData = userData | ResyncBit;
        _answersDue++;
        ResyncCancels++;
    }

    /// <summary>The resync's cancel of <paramref name="userData"/> answered <paramref name="result"/>.</summary>
    private void OnResyncAnswer(ulong userData, int result)
    {
        _answersDue--;
        // 0: the kernel held it and canceled it (its completion comes, and it goes again); EALREADY: it was
        // running, and its completion comes. ENOENT: not in the kernel, its completion reaped or lost.
        if (result == -LinuxNative.ENOENT)
        {
            _suspects.Add(userData);
        }

        if (_answersDue == 0 && _suspects.Count > 0)
        {
            // A completion under way when the kernel answered comes before this NOP's, or within the wait.
            var sqe = NextSqe();
            sqe->Opcode = RingConstants.OpNop;
            sqe->UserData = BarrierIndex;
            _barrierDue = true;
            _judgeAt = Environment.TickCount64 + JudgeAfterMs;
        }
    }

    private void OnResyncBarrier() => _barrierDue = false;

    /// <summary>A suspect still waiting now is lost.</summary>
    private void Judge()
    {
        var lost = 0;
        var operations = Volatile.Read(ref _operations);
        foreach (var userData in _suspects)
        {
            var index = (uint)userData;
            if (index == WakeIndex)
            {
                if (_wakeArmed && userData == WakeUserData)
                {
                    // Armed again by the loop.
                    _wakeArmed = false;
                    _wakeSerial++;
                    lost++;
                }

                continue;
            }

            if (index < operations.Length && operations[index] is { InFlight: true } operation && operation.CurrentUserData == userData)
            {
                _inFlight--;
                lost++;
                operation.OnLost();
            }
        }

        _suspects.Clear();
        Interlocked.Add(ref _lost, lost);
        _logger.RingResynced(_thread.Name ?? "io_uring", lost, LostOperations);
    }
}
