using Transport.Winsock.Diagnostics;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// Work other threads hand a ring thread: a queue the loop runs between reaps, and the wake-up of a
/// thread asleep in io_uring_enter, a write to an eventfd the ring keeps a read posted on, made only when
/// the thread said it was going to sleep. After the thread has ended, the thread pool runs what comes.
/// </summary>
internal sealed unsafe partial class RingThread
{
    public override void Schedule(Action<object?> action, object? state) => Post(action, state);

    /// <summary>Runs <paramref name="action"/> on the ring thread, soon; wakes the thread if it sleeps.</summary>
    public void Post(Action<object?> action, object? state)
    {
        // Enqueue is a full fence (an interlocked operation), so the reads below see a stop that came first.
        _work.Enqueue((action, state));
        if (Volatile.Read(ref _done) != 0)
        {
            // The thread has ended: the thread pool runs what comes now (every entry point fails fast),
            // one drainer at a time, never the caller, which may hold a connection's lock.
            if (Interlocked.Exchange(ref _draining, 1) == 0)
            {
                System.Threading.ThreadPool.UnsafeQueueUserWorkItem(static thread => thread.DrainAfterExit(), this, preferLocal: false);
            }

            return;
        }

        if (Volatile.Read(ref _sleeping) == 1 && Interlocked.CompareExchange(ref _sleeping, 0, 1) == 1)
        {
            // Counted, so that the thread's end cannot close the eventfd under this write (its number
            // could be another socket's by then).
            Interlocked.Increment(ref _posters);
            if (Volatile.Read(ref _done) == 0)
            {
                ulong one = 1;
                LinuxNative.Write(_eventFd, &one, 8);
            }

            Interlocked.Decrement(ref _posters);
        }
    }

    private void RunWork(bool all)
    {
        // Bounded while running, so that completions are reaped between bursts of posted work.
        for (var i = 0; (all || i < 1024) && _work.TryDequeue(out var item); i++)
        {
            try
            {
                item.Action(item.State);
            }
            catch (Exception ex)
            {
                _logger.RingWorkFailed(ex);
            }
        }
    }

    private void ArmWake()
    {
        var sqe = NextSqe();
        sqe->Opcode = RingConstants.OpRead;
        sqe->Fd = _eventFd;
        sqe->Addr = (ulong)_wakeBuffer;
        sqe->Len = 8;
        // A serial, as an operation's generation: a read that a resync took for lost is told from the next.
        sqe->UserData = WakeUserData;
        _wakeArmed = true;
    }

    private ulong WakeUserData => ((ulong)_wakeSerial << 32) | WakeIndex;

    private void DrainAfterExit()
    {
        while (true)
        {
            RunWork(all: true);
            Volatile.Write(ref _draining, 0);
            if (_work.IsEmpty || Interlocked.Exchange(ref _draining, 1) != 0)
            {
                return;
            }
        }
    }
}
