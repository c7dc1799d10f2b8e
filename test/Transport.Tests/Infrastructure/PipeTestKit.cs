using System.Buffers;
using System.IO.Pipelines;
using Transport.Winsock.Connections;

namespace Transport.Tests.Infrastructure;

/// <summary>
/// What the tests of the connection's pipes (<see cref="InputPipe"/>, <see cref="OutputPipe"/>) set them
/// up with: the options, a write that flushes, and schedulers that count or hold what they are given.
/// </summary>
internal static class PipeTestKit
{
    /// <summary>
    /// Options as a connection's, over <paramref name="pool"/> (4096-byte segments); both sides on the thread
    /// pool unless given, no backpressure unless <paramref name="pause"/> is.
    /// </summary>
    public static PipeOptions OptionsFor(
        MemoryPool<byte> pool,
        long pause = 0,
        long resume = 0,
        PipeScheduler? readerScheduler = null,
        PipeScheduler? writerScheduler = null)
        => new(
            pool,
            readerScheduler ?? PipeScheduler.ThreadPool,
            writerScheduler ?? PipeScheduler.ThreadPool,
            pause,
            resume,
            4096,
            useSynchronizationContext: false);

    /// <summary>The receive loop's part: <paramref name="bytes"/> written into the input, then flushed.</summary>
    public static async Task WriteAsync(InputPipe pipe, byte[] bytes)
    {
        bytes.CopyTo(pipe.GetSpan(bytes.Length));
        pipe.Advance(bytes.Length);
        await pipe.FlushAsync();
    }

    /// <summary>A scheduler that runs on the thread pool and counts what it was given.</summary>
    public sealed class CountingScheduler : PipeScheduler
    {
        private int _scheduled;

        public int Scheduled => Volatile.Read(ref _scheduled);

        public override void Schedule(Action<object?> action, object? state)
        {
            Interlocked.Increment(ref _scheduled);
            System.Threading.ThreadPool.QueueUserWorkItem(action, state, preferLocal: false);
        }
    }

    /// <summary>A scheduler that keeps what it is given until the test runs it.</summary>
    public sealed class HeldScheduler : PipeScheduler
    {
        private readonly List<(Action<object?> Action, object? State)> _held = [];

        public int Count { get { lock (_held) { return _held.Count; } } }

        public override void Schedule(Action<object?> action, object? state)
        {
            lock (_held)
            {
                _held.Add((action, state));
            }
        }

        public void RunAll()
        {
            (Action<object?> Action, object? State)[] work;
            lock (_held)
            {
                work = [.. _held];
                _held.Clear();
            }

            foreach (var (action, state) in work)
            {
                action(state);
            }
        }
    }
}
