using System.Runtime.InteropServices;
using Transport.Winsock.Diagnostics;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// How a ring thread ends, after a stop or a fault. Closing a ring's descriptor does not end its requests
/// at once (the kernel cancels them later, and one on an io-wq worker writes into its memory when it
/// finishes), so nothing that owns memory is ever told it ended before the kernel said so: what is in
/// flight is canceled and reaped within a bound, every completion the kernel posted or that was set aside
/// is dispatched before anything is disposed, entries the kernel never took end as never submitted, and
/// whatever is still in the kernel after that is quarantined (<see cref="RingQuarantine"/>), counted and
/// logged as the kernel fault it is.
/// </summary>
internal sealed unsafe partial class RingThread
{
    // After the grace: how long a second cancel (IORING_REGISTER_SYNC_CANCEL where the kernel has it, 6.0,
    // else another IORING_ASYNC_CANCEL_ANY | ALL) is given before what is left is the kernel's.
    private const int FinalCancelMs = 1000;

    private bool _ringBroken;
    private int _quarantined;

    /// <summary>How long a stop waits for what its cancel ended before the final cancel; tests shorten it.</summary>
    internal static TimeSpan StopGrace { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>The seam where tests make every cancel reach nothing, as for an operation deep in a driver.</summary>
    internal static bool CancelFault { get; set; }

    /// <summary>
    /// The seam where tests act on the ring thread once its loop has ended; the ring is then entered once
    /// more without reaping, as the kernel posting a completion after the loop's last look at the queue.
    /// </summary>
    internal static Action? LoopEndFault { get; set; }

    /// <summary>The cancel made after the grace, and its answer (null when none was needed); for tests.</summary>
    internal string? FinalCancel { get; private set; }

    /// <summary>Operations this thread ended with still in the kernel, now quarantined; for tests.</summary>
    public int QuarantinedOperations => Volatile.Read(ref _quarantined);

    /// <summary>Asks the thread to stop: what is in flight is canceled, then the thread ends and closes the ring.</summary>
    public Task StopAsync()
    {
        _stopRequested = true;
        Post(static _ => { }, null);
        return _exited.Task;
    }

    /// <summary>From the loop: nothing new starts, and everything in flight ends now, as a local abort.</summary>
    private void BeginStop()
    {
        _stopping = true;
        SubmitCancelAll();
    }

    private void SubmitCancelAll()
    {
        var sqe = NextSqe();
        sqe->Opcode = CancelFault ? RingConstants.OpNop : RingConstants.OpAsyncCancel;
        sqe->Fd = -1;
        sqe->OpFlags = RingConstants.CancelAny | RingConstants.CancelAll;
        sqe->UserData = IgnoredUserData;
    }

    private void Exit()
    {
        if (LoopEndFault is { } fault)
        {
            fault();
            _ring!.Enter(wait: false);
        }

        _stopping = true;
        try
        {
            if (_inFlight > 0)
            {
                CancelWhatIsLeft();
            }

            DrainCompletions();
        }
        catch (Exception ex)
        {
            // A continuation that threw: what it left is quarantined below like the rest.
            _logger.RingWorkFailed(ex);
        }

        EndUnsubmitted();
        QuarantineInFlight();
        Interlocked.Exchange(ref _done, 1);
        RunWork(all: true);
        t_current = null;
        _ring!.Dispose();
        // No Post may be writing to the eventfd when it closes (see Post).
        var spin = new SpinWait();
        while (Volatile.Read(ref _posters) != 0)
        {
            spin.SpinOnce();
        }

        LinuxNative.Close(_eventFd);
        if (!_wakeArmed)
        {
            NativeMemory.Free(_wakeBuffer);
        }

        _exited.TrySetResult();
    }

    /// <summary>The grace ran out, or the thread failed, with operations in flight: one more cancel, then reaping, bounded.</summary>
    private void CancelWhatIsLeft()
    {
        // Entries prepared meanwhile go to the kernel first, so that the cancel reaches them too.
        _ringBroken = IsFatal(_ring!.Enter(wait: false));
        if (!CancelFault && !_ringBroken)
        {
            var synchronous = _ring.SyncCancelAll(FinalCancelMs);
            FinalCancel = $"IORING_REGISTER_SYNC_CANCEL: {(synchronous == 0 ? "0" : LinuxNative.ErrnoName(-synchronous))}";
            if (synchronous == -LinuxNative.EINVAL)
            {
                // Before 6.0: the asynchronous cancel once more (the floor, 5.19, has ANY | ALL).
                SubmitCancelAll();
                FinalCancel = "IORING_ASYNC_CANCEL_ANY | ALL";
            }
        }

        var deadline = Environment.TickCount64 + FinalCancelMs;
        while (_inFlight > 0 && !_ringBroken && Environment.TickCount64 < deadline)
        {
            _ringBroken = IsFatal(_ring.Enter(wait: true, timeoutMs: 10));
            Reap();
            RunWork(all: false);
        }
    }

    /// <summary>Every completion the kernel posted, and those set aside, dispatched before anything is disposed.</summary>
    private void DrainCompletions()
    {
        // A continuation may enter the ring (a close submits what is prepared), which can post more: until none.
        for (var round = 0; round < 100; round++)
        {
            if (!_ringBroken)
            {
                _ringBroken = IsFatal(_ring!.Enter(wait: false));
            }

            if (Reap() == 0 && _ring!.Unsubmitted == 0)
            {
                break;
            }
        }

        // The eventfd's read: a stop's cancel ended it, and its completion may come a moment later where task
        // work does not run in the enter itself (COOP_TASKRUN, plain); after a fault nothing canceled it yet.
        if (_wakeArmed && !_ringBroken && !CancelFault)
        {
            var sqe = NextSqe();
            sqe->Opcode = RingConstants.OpAsyncCancel;
            sqe->Fd = -1;
            sqe->Addr = WakeUserData;
            sqe->UserData = IgnoredUserData;
            var deadline = Environment.TickCount64 + 100;
            while (_wakeArmed && !_ringBroken && Environment.TickCount64 < deadline)
            {
                _ringBroken = IsFatal(_ring!.Enter(wait: true, timeoutMs: 10));
                Reap();
            }
        }
    }

    /// <summary>
    /// Entries the kernel never took (a failed ring's): their operations end now, as never submitted, and
    /// the descriptors of their closes close here.
    /// </summary>
    private void EndUnsubmitted()
    {
        foreach (var sqe in _ring!.TakeUnsubmitted())
        {
            if (sqe.Opcode == RingConstants.OpClose && sqe.FileIndex == 0)
            {
                // A slot's close (file_index set) needs nothing: the table goes with the ring.
                LinuxNative.Close(sqe.Fd);
                continue;
            }

            var index = (int)(uint)sqe.UserData;
            var operations = Volatile.Read(ref _operations);
            if (index >= FirstIndex && index < operations.Length && operations[index]?.OnCompletion(sqe.UserData, -LinuxNative.ECANCELED, 0) == true)
            {
                _inFlight--;
            }
        }
    }

    /// <summary>What the kernel still holds after every cancel: kept for good, counted, and logged once.</summary>
    private void QuarantineInFlight()
    {
        var operations = Volatile.Read(ref _operations);
        var count = 0;
        for (var i = FirstIndex; i < operations.Length; i++)
        {
            if (operations[i] is { InFlight: true, Retired: false } operation)
            {
                _inFlight--;
                count++;
                operation.Quarantine();
            }
        }

        if (_wakeArmed)
        {
            // The eventfd's read was not reaped either: its buffer is never freed (see Exit).
            RingQuarantine.Keep((nint)_wakeBuffer);
        }

        Volatile.Write(ref _quarantined, count);
        if (count > 0 || _wakeArmed)
        {
            _logger.RingOperationsQuarantined(_thread.Name ?? "io_uring", count, _wakeArmed, StopGrace + TimeSpan.FromMilliseconds(FinalCancelMs));
        }
    }

    private static bool IsFatal(int entered) => entered < 0 && entered is not (-LinuxNative.ETIME or -LinuxNative.EBUSY or -LinuxNative.EAGAIN or -LinuxNative.EBADR);
}
